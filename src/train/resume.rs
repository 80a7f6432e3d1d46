//! A run saved after every epoch and continued from its directory, ending with the same weights
//! as a run never interrupted: shuffling is a function of (seed, epoch) and dropout masks of
//! (seed, layer, step, element), so only the tensors, the step count and the history need
//! keeping.

use std::path::Path;

use super::{EpochRecord, TrainConfig, Trainer};
use crate::checkpoint::{self, Progress, STATE_FILE};
use crate::data::mnist::Mnist;
use crate::graph::Compute;
use crate::optim::Optimizer;
use crate::{Error, Result};

impl<'b, B: Compute> Trainer<'b, B> {
    /// Writes the run's model and training state into `dir` (`checkpoint::save_run`): the
    /// model, the optimizer state and the history, read from the device in one submission.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let settings = self.config.settings()?;
        let history = serde_json::to_string(&self.history)?;
        let progress = Progress {
            epochs_done: self.epochs_done,
            settings: &settings,
            history: &history,
        };
        checkpoint::save_run(self.backend, dir, &self.model, &self.optimizer, progress)
    }

    /// Continues the run saved in `dir`. `config` must describe the same run; only `epochs`
    /// may differ.
    pub fn resume(backend: &'b B, config: TrainConfig, data: &Mnist, dir: &Path) -> Result<Self> {
        let restored = checkpoint::load_run(dir, &config.spec, &config.settings()?)?;
        let history: Vec<EpochRecord> =
            serde_json::from_str(&restored.state.history).map_err(|e| Error::Format {
                path: dir.join(STATE_FILE),
                message: format!("history metadata: {e}"),
            })?;
        let optimizer = Optimizer::upload(
            backend,
            config.optimizer,
            restored.state.optimizer_steps,
            &restored.state.optimizer,
        )?;
        Trainer::with_state(
            backend,
            config,
            data,
            &restored.model.model,
            optimizer,
            restored.state.epochs_done,
            history,
        )
    }
}
