//! The model-level API: a classifier of any architecture with its optimizer, trained on tensors the caller
//! provides (on the device, or as host slices), for any backend.
//!
//! ```
//! use wgnorm::cpu::CpuBackend;
//! use wgnorm::graph::{Init, ModelSpec};
//! use wgnorm::model::Classifier;
//! use wgnorm::optim::OptimizerConfig;
//!
//! # fn main() -> wgnorm::Result<()> {
//! let backend = CpuBackend::default();
//! let spec = ModelSpec::mlp(2, &[16], 2, true, 0.2)?;
//! let mut model = Classifier::new(&backend, &spec, OptimizerConfig::adam(1e-2), Init::Keras, 0)?;
//! // Class 1 where x0 > x1.
//! let x = [0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.1, 0.6];
//! let labels = [1, 0, 1, 0];
//! for _ in 0..200 {
//!     model.train_batch_slices(&backend, &x, &labels)?;
//! }
//! assert_eq!(model.predict(&backend, &x)?, vec![1, 0, 1, 0]);
//! # Ok(())
//! # }
//! ```

use std::path::Path;

mod group;

use crate::backend::Dtype;
use crate::checkpoint;
use crate::graph::{Compute, HostModel, Init, ModelSpec, Sequential, StepKey};
use crate::ops::batchnorm::Mode;
use crate::ops::loss::{LossTotals, metric};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::train::{Passes, Rows};
use crate::{Error, Result};

/// An MLP classifier (`ModelSpec`) with its optimizer, on one backend. Training steps are
/// recorded and submitted without waiting; the loss and accuracy are summed on the device until
/// `take_totals` reads them.
pub struct Classifier<B: Compute> {
    mlp: Sequential<B>,
    optimizer: Optimizer<B>,
    metrics: B::Buffer,
    seed: u64,
}

impl<B: Compute> Classifier<B> {
    /// A freshly initialized model. `seed` draws the initial weights and the dropout masks.
    pub fn new(
        backend: &B,
        spec: &ModelSpec,
        optimizer: OptimizerConfig,
        init: Init,
        seed: u64,
    ) -> Result<Self> {
        Self::from_host(
            backend,
            spec,
            &HostModel::initial(spec, init, seed),
            optimizer,
            seed,
        )
    }

    /// A model from host weights (`HostModel`, as `checkpoint::load_model` returns them), with
    /// a fresh optimizer state.
    pub fn from_host(
        backend: &B,
        spec: &ModelSpec,
        host: &HostModel,
        optimizer: OptimizerConfig,
        seed: u64,
    ) -> Result<Self> {
        optimizer.validate()?;
        let lens: Vec<usize> = spec.params().iter().map(|p| p.len()).collect();
        Ok(Self {
            mlp: Sequential::upload(backend, spec, host)?,
            optimizer: Optimizer::new(backend, optimizer, &lens)?,
            metrics: backend.filled(metric::LEN, 0.0)?,
            seed,
        })
    }

    /// Loads a model file written by `save` (or `wgnorm train`).
    pub fn load(backend: &B, path: &Path, optimizer: OptimizerConfig, seed: u64) -> Result<Self> {
        let checkpoint = checkpoint::load_model(path)?;
        Self::from_host(
            backend,
            &checkpoint.spec,
            &checkpoint.model,
            optimizer,
            seed,
        )
    }

    /// Writes the model as safetensors with PyTorch `state_dict` names, its floats stored as
    /// `dtype` (f16 halves the file and rounds each value); the file is replaced atomically, so
    /// an interrupted save leaves the previous one intact.
    pub fn save(&self, backend: &B, path: &Path, dtype: Dtype) -> Result<()> {
        checkpoint::save_model(path, self.spec(), &self.mlp.download(backend)?, 0, dtype)
    }

    /// Saves the model and its training state into `dir`, as `wgnorm train` writes a run:
    /// `model.safetensors` (PyTorch's `state_dict`) and `training_state.safetensors` (the
    /// optimizer's state, its step count and settings, and the seed), read from the device in
    /// one submission. `resume` continues from them exactly.
    pub fn save_checkpoint(&self, backend: &B, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let settings = self.settings()?;
        let progress = checkpoint::Progress {
            epochs_done: 0,
            settings: &settings,
            history: "[]",
        };
        checkpoint::save_run(backend, dir, &self.mlp, &self.optimizer, progress)
    }

    /// Continues the model saved in `dir` by `save_checkpoint`: weights, running statistics,
    /// optimizer state and step count, learning rate and seed, so that the next steps are the
    /// ones an uninterrupted model would take (dropout masks follow the step count).
    pub fn resume(backend: &B, dir: &Path) -> Result<Self> {
        let run = checkpoint::read_run(dir)?;
        let seed = run.settings["seed"].as_u64().ok_or_else(|| Error::Format {
            path: dir.join(checkpoint::STATE_FILE),
            message: "the settings hold no seed".to_string(),
        })?;
        let state = &run.state;
        Ok(Self {
            mlp: Sequential::upload(backend, &run.model.spec, &run.model.model)?,
            optimizer: Optimizer::upload(
                backend,
                run.optimizer,
                state.optimizer_steps,
                &state.optimizer,
            )?,
            metrics: backend.filled(metric::LEN, 0.0)?,
            seed,
        })
    }

    /// What `save_checkpoint` records beside the tensors.
    fn settings(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "optimizer": serde_json::to_value(self.optimizer.config)?,
            "seed": self.seed,
        }))
    }

    /// Changes the learning rate from the next step on (a schedule, or a resumed model trained
    /// on with another rate); the optimizer's state is kept.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let config = self.optimizer.config.with_lr(lr);
        config.validate()?;
        self.optimizer.config = config;
        Ok(())
    }

    /// The optimizer's settings in use.
    pub fn optimizer(&self) -> OptimizerConfig {
        self.optimizer.config
    }

    /// The architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.mlp.spec
    }

    /// The layers, for callers that drive `Sequential::forward`/`backward` themselves.
    pub fn mlp(&mut self) -> &mut Sequential<B> {
        &mut self.mlp
    }

    /// Stores the hidden activations as `dtype` from the next step on (f16 halves their
    /// memory; parameters, gradients and arithmetic stay f32). Refused where the backend cannot
    /// store it.
    pub fn set_activations(&mut self, backend: &B, dtype: Dtype) -> Result<()> {
        crate::graph::check_activations(backend, dtype)?;
        self.mlp.activations = dtype;
        Ok(())
    }

    /// Training steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.steps
    }

    /// The rows of `x` values, refusing none or a partial row.
    fn whole_rows(&self, x: usize) -> Result<usize> {
        let inputs = self.spec().inputs();
        if x == 0 || !x.is_multiple_of(inputs) {
            return Err(Error::Shape(format!(
                "x has {x} values, expected a positive multiple of {inputs} inputs"
            )));
        }
        Ok(x / inputs)
    }

    /// Rows of `x` (rows × inputs values) given `labels` (one class index per row, as f32).
    fn rows_of(&self, x: usize, labels: usize) -> Result<usize> {
        let inputs = self.spec().inputs();
        if labels == 0 || x != labels * inputs {
            return Err(Error::Shape(format!(
                "x has {x} values, expected rows × {inputs} inputs for {labels} labels"
            )));
        }
        Ok(labels)
    }

    /// One training step (forward, cross-entropy, backward, optimizer) on a batch already on
    /// the device: `x` is consumed (its buffer is reused for activations).
    pub fn train_batch(&mut self, backend: &B, x: B::Buffer, labels: &B::Buffer) -> Result<()> {
        self.rows_of(backend.len_of(&x), backend.len_of(labels))?;
        crate::train::train_on_batch(
            backend,
            &mut self.mlp,
            &mut self.optimizer,
            self.seed,
            None,
            x,
            labels,
            &mut self.metrics,
            None,
        )?;
        backend.flush()
    }

    /// `train_batch` from host slices: `x` row-major rows × inputs, one label per row.
    pub fn train_batch_slices(&mut self, backend: &B, x: &[f32], labels: &[u32]) -> Result<()> {
        let labels = self.label_buffer(backend, x.len(), labels)?;
        self.train_batch(backend, backend.upload(x)?, &labels)
    }

    /// Loss and accuracy summed over the training steps since the last call (waits for them).
    pub fn take_totals(&mut self, backend: &B) -> Result<LossTotals> {
        let totals = LossTotals::from_metrics(&backend.download(&self.metrics)?)?;
        self.metrics = backend.filled(metric::LEN, 0.0)?;
        Ok(totals)
    }

    /// Logits (rows × classes) of a batch on the device, in eval mode: running statistics, no
    /// dropout, nothing updated.
    pub fn logits(&mut self, backend: &B, x: B::Buffer) -> Result<B::Buffer> {
        let rows = self.whole_rows(backend.len_of(&x))?;
        let key = StepKey::new(self.seed, self.optimizer.steps);
        let (logits, _) = self.mlp.forward(backend, Mode::Eval, x, rows, key)?;
        Ok(logits)
    }

    /// The predicted class of each row of `x` (host slice, rows × inputs): the first maximum
    /// of its logits, found on the device, in passes of as many rows as the device binds at
    /// once (`train::Passes`).
    pub fn predict(&mut self, backend: &B, x: &[f32]) -> Result<Vec<usize>> {
        let rows = self.whole_rows(x.len())?;
        let source = Rows::Host { x, labels: None };
        Passes::inference(backend, self.spec(), source, rows)?.classes(backend, &mut self.mlp)
    }

    /// Mean loss and accuracy of `x` against `labels` in eval mode, summed on the device over
    /// passes as `predict` makes them.
    pub fn evaluate(&mut self, backend: &B, x: &[f32], labels: &[u32]) -> Result<LossTotals> {
        self.check_labels(x.len(), labels)?;
        let source = Rows::Host {
            x,
            labels: Some(labels),
        };
        Passes::inference(backend, self.spec(), source, labels.len())?.score(backend, &mut self.mlp)
    }

    /// Labels checked against the classes and the rows of x, uploaded as f32.
    fn label_buffer(&self, backend: &B, x_len: usize, labels: &[u32]) -> Result<B::Buffer> {
        self.check_labels(x_len, labels)?;
        let as_f32: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        backend.upload(&as_f32)
    }

    /// Refuses labels outside the classes, or not one per row of x.
    fn check_labels(&self, x_len: usize, labels: &[u32]) -> Result<()> {
        self.rows_of(x_len, labels.len())?;
        let classes = self.spec().classes();
        match labels.iter().find(|&&l| l as usize >= classes) {
            Some(bad) => Err(Error::InvalidArgument(format!(
                "label {bad} is outside 0..{classes}"
            ))),
            None => Ok(()),
        }
    }
}
