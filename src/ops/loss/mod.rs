//! Softmax cross-entropy on logits z (rows × classes) against integer labels, forward and
//! backward fused, plus the count of correct predictions:
//!
//! ```text
//! loss_r = log Σ_j exp(z_rj − max_r) + max_r − z_r,label     (log-sum-exp, shifted by the max)
//! dz_rj  = (softmax(z_r)_j − [j = label_r]) / rows           (the gradient of the mean loss)
//! correct_r = [argmax_j z_rj = label_r]                      (first maximum wins, as torch)
//! argmax_r  = the first j with the largest z_rj               (the predicted class)
//! ```
//!
//! The sums accumulate in a metrics buffer on the device over many steps, so the host reads
//! them rarely. Labels live on the device too, so an out-of-range label cannot be refused when
//! the op is recorded: both backends note the first one in the metrics buffer (its row takes no
//! part in the sums and gets a zero gradient), and reading the totals returns the error. The
//! WGSL is `shaders/loss.wgsl`.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::LossParams;

use crate::backend::Backend;
use crate::ops::{check_len, check_u32_indexable};
use crate::{Error, Result};

/// Slots of the metrics buffer that the loss adds to (`METRIC_*` in WGSL).
pub mod metric {
    /// Σ loss.
    pub const LOSS: usize = 0;
    /// Kahan compensation of the loss sum.
    pub const LOSS_COMPENSATION: usize = 1;
    /// Correct predictions.
    pub const CORRECT: usize = 2;
    /// Rows seen.
    pub const SAMPLES: usize = 3;
    /// Loss calls (training steps) summed.
    pub const CALLS: usize = 4;
    /// The 1-based call whose batch loss was first not finite; 0 while none was.
    pub const FIRST_NON_FINITE: usize = 5;
    /// The 1-based call whose batch first held a label that is not a class index; 0 while
    /// none did.
    pub const BAD_LABEL_CALL: usize = 6;
    /// That batch's first row with such a label.
    pub const BAD_LABEL_ROW: usize = 7;
    /// The label.
    pub const BAD_LABEL: usize = 8;
    /// The number of classes it was checked against.
    pub const BAD_LABEL_CLASSES: usize = 9;
    /// Values in a metrics buffer.
    pub const LEN: usize = 10;
}

/// What a metrics buffer has summed since it was zeroed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossTotals {
    /// Σ per-row cross-entropy.
    pub loss_sum: f64,
    /// Rows whose argmax was the label.
    pub correct: f64,
    /// Rows.
    pub samples: f64,
    /// The 1-based step (loss call) whose batch loss was first not finite, if one was.
    pub first_non_finite_step: Option<u64>,
}

impl LossTotals {
    /// The totals in a downloaded metrics buffer; an error if a batch held a label that is not
    /// a class index.
    pub fn from_metrics(values: &[f32]) -> Result<Self> {
        check_len("metrics buffer", values.len(), metric::LEN)?;
        if values[metric::BAD_LABEL_CALL] != 0.0 {
            return Err(Error::InvalidArgument(format!(
                "label {} of row {} in step {} is not a class index below {}",
                values[metric::BAD_LABEL],
                values[metric::BAD_LABEL_ROW],
                values[metric::BAD_LABEL_CALL],
                values[metric::BAD_LABEL_CLASSES],
            )));
        }
        Ok(Self {
            loss_sum: f64::from(values[metric::LOSS])
                - f64::from(values[metric::LOSS_COMPENSATION]),
            correct: f64::from(values[metric::CORRECT]),
            samples: f64::from(values[metric::SAMPLES]),
            first_non_finite_step: match values[metric::FIRST_NON_FINITE] {
                0.0 => None,
                step => Some(step as u64),
            },
        })
    }

    /// Mean loss per row.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1.0)
    }

    /// Fraction of rows predicted correctly.
    pub fn accuracy(&self) -> f64 {
        self.correct / self.samples.max(1.0)
    }
}

/// The most classes whose indices f32 holds exactly (2^24), as `argmax` stores them.
pub const MAX_EXACT_CLASS: usize = 1 << 24;

/// Whether a label (stored as f32) is a class index: an integer in 0..classes. NaN is not.
pub(crate) fn is_class_index(label: f32, classes: usize) -> bool {
    label >= 0.0 && label < classes as f32 && label.fract() == 0.0
}

/// Softmax cross-entropy of `logits` (rows × classes, row-major) against `labels` (one class
/// index per row, stored as f32). Adds the loss sum, correct count and rows to `metrics`
/// (`metric::LEN` values); with `dlogits`, also writes the gradient of the batch-mean loss.
pub trait LossOps: Backend + Sized {
    /// Adds `logits`' loss and accuracy against `labels` to `metrics`; with `dlogits`, writes
    /// the gradient of the batch-mean loss.
    fn softmax_cross_entropy(
        &self,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        classes: usize,
        dlogits: Option<&mut Self::Buffer>,
        metrics: &mut Self::Buffer,
    ) -> Result<()> {
        let dlogits_len = dlogits.as_deref().map(|d| self.len_of(d));
        let rows = check_cross_entropy(self, [logits, labels, metrics], classes, dlogits_len)?;
        self.softmax_cross_entropy_unchecked(logits, labels, classes, rows, dlogits, metrics)
    }

    /// `softmax_cross_entropy` on rows that are one part of a batch of `batch_rows` (a
    /// data-parallel rank's slice): `dlogits` is this part's share of the gradient of the whole
    /// batch's mean loss, so that the parts' gradients add up to the batch's.
    fn softmax_cross_entropy_part(
        &self,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        (classes, batch_rows): (usize, usize),
        dlogits: &mut Self::Buffer,
        metrics: &mut Self::Buffer,
    ) -> Result<()> {
        let dlogits_len = Some(self.len_of(dlogits));
        let rows = check_cross_entropy(self, [logits, labels, metrics], classes, dlogits_len)?;
        if batch_rows < rows {
            return Err(Error::Shape(format!(
                "{rows} rows cannot be a part of a batch of {batch_rows}"
            )));
        }
        let dlogits = Some(dlogits);
        self.softmax_cross_entropy_unchecked(logits, labels, classes, batch_rows, dlogits, metrics)
    }

    /// Writes the predicted class of each row of `logits` (rows × classes, rows being
    /// `predicted`'s length) to `predicted`, as f32 like the labels: the first maximum, as the
    /// correct count takes it (a NaN never wins a comparison).
    fn argmax(
        &self,
        logits: &Self::Buffer,
        classes: usize,
        predicted: &mut Self::Buffer,
    ) -> Result<()> {
        let rows = self.len_of(predicted);
        if classes == 0 || rows == 0 {
            return Err(Error::Shape(format!(
                "argmax needs at least one row and one class, got {rows} rows of {classes}"
            )));
        }
        if classes > MAX_EXACT_CLASS {
            return Err(Error::Limit(format!(
                "argmax stores classes as f32, exact up to {MAX_EXACT_CLASS}, got {classes} \
                 classes"
            )));
        }
        let values = rows.saturating_mul(classes);
        check_len("argmax logits", self.len_of(logits), values)?;
        check_u32_indexable("argmax logits", values)?;
        self.argmax_unchecked(logits, classes, predicted)
    }

    /// `softmax_cross_entropy` on checked arguments.
    #[doc(hidden)]
    /// `dlogits` is the gradient of the loss summed over the rows, divided by `mean_over`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy_unchecked(
        &self,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        classes: usize,
        mean_over: usize,
        dlogits: Option<&mut Self::Buffer>,
        metrics: &mut Self::Buffer,
    ) -> Result<()>;

    /// `argmax` on checked arguments.
    #[doc(hidden)]
    fn argmax_unchecked(
        &self,
        logits: &Self::Buffer,
        classes: usize,
        predicted: &mut Self::Buffer,
    ) -> Result<()>;
}

/// The checks of a cross-entropy over `[logits, labels, metrics]` with a gradient of
/// `dlogits_len` values where there is one; returns the rows.
fn check_cross_entropy<B: Backend>(
    backend: &B,
    [logits, labels, metrics]: [&B::Buffer; 3],
    classes: usize,
    dlogits_len: Option<usize>,
) -> Result<usize> {
    let rows = backend.len_of(labels);
    if classes == 0 || rows == 0 {
        return Err(Error::Shape(format!(
            "cross-entropy needs at least one row and one class, got {rows} rows of {classes}"
        )));
    }
    let values = rows.saturating_mul(classes);
    check_len("cross-entropy logits", backend.len_of(logits), values)?;
    check_u32_indexable("cross-entropy logits", values)?;
    if let Some(len) = dlogits_len {
        check_len("cross-entropy gradient", len, values)?;
    }
    check_len("metrics buffer", backend.len_of(metrics), metric::LEN)?;
    Ok(rows)
}
