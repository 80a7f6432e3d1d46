//! Batched inference: a model run forward over more rows than one pass should take. Every
//! caller (evaluation, scores with batch statistics, recalibration, the `Classifier`'s
//! predictions and scores, `wgnorm eval` and `predict`) runs its passes here, so each pass:
//!
//! - is as large as the device binds at once (`inference_rows`), or a fixed batch where the
//!   batch is what is measured;
//! - is submitted before the next is recorded, so that the next reuses the buffers it freed and
//!   device memory stays that of one pass (`BufferPool` reuses a buffer only once the work that
//!   may read it has been submitted);
//! - leaves on the device what can stay there: loss and accuracy are summed into a metrics
//!   buffer, classes are found by `argmax` there, and only what a caller reads back leaves it,
//!   one pass at a time.

use crate::backend::Backend;
use crate::graph::{Compute, ModelSpec, Sequential, StepKey};
use crate::ops::batchnorm::Mode;
use crate::ops::data::{DeviceImages, IndexList};
use crate::ops::loss::{LossTotals, metric};
use crate::{Error, Result};

/// Rows per inference pass at most; any size gives the same results.
pub const EVAL_BATCH: usize = 1000;

/// The most bytes one tensor of an inference pass takes where the backend sets no smaller
/// bound: a CNN's patches at 1,000 images would be 225 MB, memory that larger passes do not
/// repay.
pub const EVAL_TENSOR_BYTES: u64 = 64 << 20;

/// Rows of one inference pass of `spec` on `backend`: `EVAL_BATCH`, or fewer where the
/// binding limit (an error if not one sample fits) or `EVAL_TENSOR_BYTES` (at least one sample
/// a pass) needs.
pub fn inference_rows<B: Backend>(backend: &B, spec: &ModelSpec) -> Result<usize> {
    let binding_rows = spec.max_rows(backend.max_binding_bytes())?;
    Ok(EVAL_BATCH
        .min(binding_rows)
        .min(spec.memory_rows(EVAL_TENSOR_BYTES)))
}

/// Where the rows of the passes come from.
pub enum Rows<'a, B: Compute> {
    /// Rows of an index list into images on the device, with their labels.
    Indexed {
        /// The images, as bytes.
        images: &'a DeviceImages<B>,
        /// Which image each row is.
        index: &'a IndexList<B>,
    },
    /// Values on the host, rows × the model's inputs, uploaded one pass at a time.
    Host {
        /// The rows, row-major.
        x: &'a [f32],
        /// One class index per row, where the rows are scored.
        labels: Option<&'a [u32]>,
    },
}

impl<B: Compute> Rows<'_, B> {
    /// Rows `first..first + rows` on the device, and their labels where known.
    fn load(
        &self,
        backend: &B,
        first: usize,
        rows: usize,
        inputs: usize,
    ) -> Result<(B::Buffer, Option<B::Buffer>)> {
        match *self {
            Rows::Indexed { images, index } => {
                let mut x = backend.scratch(rows * images.row_len)?;
                let mut labels = backend.scratch(rows)?;
                backend.gather(images, index, first, &mut x, &mut labels)?;
                Ok((x, Some(labels)))
            }
            Rows::Host { x, labels } => {
                let x = backend.upload(&x[first * inputs..(first + rows) * inputs])?;
                let labels = labels.map(|labels| {
                    let as_f32: Vec<f32> = (labels[first..first + rows].iter())
                        .map(|&label| label as f32)
                        .collect();
                    backend.upload(&as_f32)
                });
                Ok((x, labels.transpose()?))
            }
        }
    }

    /// Refuses host values or labels that hold fewer than `rows` rows.
    fn check(&self, rows: usize, inputs: usize) -> Result<()> {
        let Rows::Host { x, labels } = self else {
            return Ok(());
        };
        if x.len() < rows * inputs {
            return Err(Error::Shape(format!(
                "x has {} values, fewer than {rows} rows × {inputs} inputs",
                x.len()
            )));
        }
        match labels {
            Some(labels) if labels.len() < rows => Err(Error::Shape(format!(
                "{} labels for {rows} rows",
                labels.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// One pass, as `Passes::run` hands it over before submitting it.
pub struct Pass<'p, B: Backend> {
    /// Its place among the passes, from 0.
    pub number: usize,
    /// Rows in it.
    pub rows: usize,
    /// The model's output, rows × classes.
    pub logits: &'p B::Buffer,
    /// One class index per row (as f32), where the rows come with labels.
    pub labels: Option<&'p B::Buffer>,
}

/// The first rows of a source split into forward passes, and the mode they run in.
pub struct Passes<'a, B: Compute> {
    source: Rows<'a, B>,
    /// Rows the passes cover: the first this many of the source.
    rows: usize,
    per_pass: usize,
    mode: Mode,
    /// Pass k of a training-mode run draws its dropout masks with step k of this seed.
    seed: u64,
}

impl<'a, B: Compute> Passes<'a, B> {
    /// Eval-mode passes over the first `rows` rows of `source`, as many rows a pass as
    /// `inference_rows` allows.
    pub fn inference(
        backend: &B,
        spec: &ModelSpec,
        source: Rows<'a, B>,
        rows: usize,
    ) -> Result<Self> {
        Ok(Self {
            source,
            rows,
            per_pass: inference_rows(backend, spec)?,
            mode: Mode::Eval,
            seed: 0,
        })
    }

    /// Training-mode passes of `batch` rows each over the first `rows` rows of `source` (a
    /// last, partial batch is left out): each normalized by its own batch statistics, and
    /// updating the running ones, as a training step would; pass k draws its dropout masks
    /// with `StepKey::new(seed, k)`.
    pub fn batches(source: Rows<'a, B>, rows: usize, batch: usize, seed: u64) -> Result<Self> {
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "batches need at least one row".to_string(),
            ));
        }
        Ok(Self {
            source,
            rows: rows - rows % batch,
            per_pass: batch,
            mode: Mode::Train,
            seed,
        })
    }

    /// Rows the passes cover.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Runs the passes in order: loads each one's rows, runs `model` forward, hands its logits
    /// to `each` (with the model), then submits the pass, its buffers released, so that the
    /// next pass reuses them.
    pub fn run(
        &self,
        backend: &B,
        model: &mut Sequential<B>,
        mut each: impl FnMut(&mut Sequential<B>, Pass<'_, B>) -> Result<()>,
    ) -> Result<()> {
        let inputs = model.spec.inputs();
        self.source.check(self.rows, inputs)?;
        for (number, first) in (0..self.rows).step_by(self.per_pass).enumerate() {
            let rows = self.per_pass.min(self.rows - first);
            let key = StepKey::new(self.seed, number as u64);
            // The pass's buffers are dropped here, before the submission that frees them.
            {
                let (x, labels) = self.source.load(backend, first, rows, inputs)?;
                let (logits, _) = model.forward(backend, self.mode, x, rows, key)?;
                let pass = Pass {
                    number,
                    rows,
                    logits: &logits,
                    labels: labels.as_ref(),
                };
                each(model, pass)?;
            }
            backend.flush()?;
        }
        Ok(())
    }

    /// The loss and accuracy of the passes against their labels, summed on the device and read
    /// once.
    pub fn score(&self, backend: &B, model: &mut Sequential<B>) -> Result<LossTotals> {
        let classes = model.spec.classes();
        let mut metrics = backend.filled(metric::LEN, 0.0)?;
        self.run(backend, model, |_, pass| {
            let labels = pass.labels.ok_or_else(|| {
                Error::InvalidArgument("scoring needs a label for every row".to_string())
            })?;
            backend.softmax_cross_entropy(pass.logits, labels, classes, None, &mut metrics)
        })?;
        LossTotals::from_metrics(&backend.download(&metrics)?)
    }

    /// The predicted class of every row (the first maximum of its logits, found on the
    /// device), read back one pass at a time.
    pub fn classes(&self, backend: &B, model: &mut Sequential<B>) -> Result<Vec<usize>> {
        let classes = model.spec.classes();
        let mut predicted = Vec::with_capacity(self.rows);
        self.run(backend, model, |_, pass| {
            let mut out = backend.scratch(pass.rows)?;
            backend.argmax(pass.logits, classes, &mut out)?;
            let read = backend.download(&out)?;
            predicted.extend(read.iter().map(|&class| class as usize));
            Ok(())
        })?;
        Ok(predicted)
    }
}
