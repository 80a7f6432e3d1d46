//! Softmax cross-entropy with its gradient and the count of correct predictions, for both
//! backends. The formula lives in `shaders/loss.wgsl`; the CPU loop here is its twin.

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};
use crate::ops::check_len;
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
    /// Values in a metrics buffer.
    pub const LEN: usize = 6;
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
    /// The totals in a downloaded metrics buffer.
    pub fn from_metrics(values: &[f32]) -> Result<Self> {
        check_len("metrics buffer", values.len(), metric::LEN)?;
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

/// Softmax cross-entropy of `logits` (rows × classes, row-major) against `labels` (one class
/// index per row, stored as f32). Adds the loss sum, correct count and rows to `metrics`
/// (`metric::LEN` values); with `dlogits`, also writes the gradient of the batch-mean loss.
pub trait LossOps: Backend + Sized {
    /// Adds `logits`' loss and accuracy against `labels` to `metrics`; with `dlogits`, writes the gradient of the batch-mean loss.
    fn softmax_cross_entropy(
        &self,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        classes: usize,
        dlogits: Option<&mut Self::Buffer>,
        metrics: &mut Self::Buffer,
    ) -> Result<()>;
}

fn check(logits: usize, rows: usize, classes: usize, metrics: usize) -> Result<()> {
    if classes == 0 || rows == 0 {
        return Err(Error::Shape(format!(
            "cross-entropy needs at least one row and one class, got {rows} rows of {classes}"
        )));
    }
    check_len("cross-entropy logits", logits, rows * classes)?;
    check_len("metrics buffer", metrics, metric::LEN)
}

impl LossOps for CpuBackend {
    fn softmax_cross_entropy(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<f32>,
        classes: usize,
        mut dlogits: Option<&mut Vec<f32>>,
        metrics: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = labels.len();
        check(logits.len(), rows, classes, metrics.len())?;
        if let Some(d) = &dlogits {
            check_len("cross-entropy gradient", d.len(), logits.len())?;
        }
        let grad_scale = 1.0 / rows as f32;
        let (mut loss, mut correct) = (0.0f32, 0.0f32);
        for (r, (z, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
            let label = label as usize;
            if label >= classes {
                return Err(Error::InvalidArgument(format!(
                    "label {label} of row {r} is not below the {classes} classes"
                )));
            }
            let (mut best, mut top) = (0, z[0]);
            for (j, &value) in z.iter().enumerate().skip(1) {
                if value > top {
                    (best, top) = (j, value);
                }
            }
            let total: f32 = z.iter().map(|&v| (v - top).exp()).sum();
            loss += total.ln() + top - z[label];
            correct += if best == label { 1.0 } else { 0.0 };
            if let Some(d) = dlogits.as_deref_mut() {
                let row = &mut d[r * classes..(r + 1) * classes];
                for (j, (d, &value)) in row.iter_mut().zip(z).enumerate() {
                    let onehot = if j == label { 1.0 } else { 0.0 };
                    *d = ((value - top).exp() / total - onehot) * grad_scale;
                }
            }
        }
        let term = loss - metrics[metric::LOSS_COMPENSATION];
        let sum = metrics[metric::LOSS] + term;
        metrics[metric::LOSS_COMPENSATION] = (sum - metrics[metric::LOSS]) - term;
        metrics[metric::LOSS] = sum;
        metrics[metric::CORRECT] += correct;
        metrics[metric::SAMPLES] += rows as f32;
        metrics[metric::CALLS] += 1.0;
        if !loss.is_finite() && metrics[metric::FIRST_NON_FINITE] == 0.0 {
            metrics[metric::FIRST_NON_FINITE] = metrics[metric::CALLS];
        }
        Ok(())
    }
}

/// Uniform parameters of `shaders/loss.wgsl` (`struct LossParams` there).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossParams {
    pub rows: u32,
    pub classes: u32,
    pub grad_scale: f32,
    pub write_grad: u32,
}

const _: () = assert!(std::mem::size_of::<LossParams>() == 16);

impl LossOps for GpuBackend {
    fn softmax_cross_entropy(
        &self,
        logits: &GpuBuffer,
        labels: &GpuBuffer,
        classes: usize,
        dlogits: Option<&mut GpuBuffer>,
        metrics: &mut GpuBuffer,
    ) -> Result<()> {
        let rows = labels.len();
        check(logits.len(), rows, classes, metrics.len())?;
        self.check_bindable("cross-entropy logits", logits)?;
        let params = LossParams {
            rows: rows as u32,
            classes: classes as u32,
            grad_scale: 1.0 / rows as f32,
            write_grad: dlogits.is_some() as u32,
        };
        // Without a gradient the output slot still needs a buffer, which is never written.
        let out = match dlogits {
            Some(d) => {
                check_len("cross-entropy gradient", d.len(), logits.len())?;
                &*d
            }
            None => self.placeholder(),
        };
        let bindings = [
            Binding::whole(Slot::X, logits),
            Binding::whole(Slot::Labels, labels),
            Binding::whole(Slot::Out, out),
            Binding::whole(Slot::Metrics, metrics),
        ];
        self.record(|encoder| {
            self.dispatch(
                encoder,
                Kernel::SoftmaxCrossEntropy,
                &params,
                &bindings,
                [1, 1, 1],
            )
        })
    }
}
