//! A run saved after every epoch and continued from its directory, ending with the same weights
//! as a run never interrupted: shuffling is a function of (seed, epoch) and dropout masks of
//! (seed, layer, step, element), so only the tensors, the step count and the history need
//! keeping.

use std::path::Path;
use std::rc::Rc;

use super::{EpochRecord, TrainConfig, Trainer};
use crate::checkpoint::{self, Progress, STATE_FILE};
use crate::data::mnist::Mnist;
use crate::distributed::{self, Collective};
use crate::graph::Compute;
use crate::optim::Optimizer;
use crate::{Error, Result};

impl<'b, B: Compute> Trainer<'b, B> {
    /// Writes the run's model and training state into `dir` (`checkpoint::save_run`): the
    /// model, the optimizer state and the history, read from the device in one submission.
    /// A data-parallel run is saved with its world size and its BatchNorm synchronization, which
    /// a resumed run must share; only rank 0 need save.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let settings = run_settings(&self.config, self.world(), self.sync_batchnorm)?;
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
        let settings = run_settings(&config, 1, false)?;
        Self::resume_from(backend, config, data, dir, settings)
    }

    /// Continues the data-parallel run saved in `dir` as a rank of `group` (`join`), which must
    /// have as many ranks, and the same BatchNorm synchronization, as the run was saved with.
    /// Every rank reads `dir`.
    pub fn resume_in_group(
        backend: &'b B,
        config: TrainConfig,
        data: &Mnist,
        dir: &Path,
        group: Rc<dyn Collective>,
        sync_batchnorm: bool,
    ) -> Result<Self> {
        let settings = run_settings(&config, group.world(), sync_batchnorm)?;
        let resumed = Self::resume_from(backend, config, data, dir, settings);
        let mut trainer = distributed::agree(&*group, resumed)?;
        trainer.join(group, sync_batchnorm)?;
        Ok(trainer)
    }

    fn resume_from(
        backend: &'b B,
        config: TrainConfig,
        data: &Mnist,
        dir: &Path,
        settings: serde_json::Value,
    ) -> Result<Self> {
        let restored = checkpoint::load_run(dir, &config.spec, &settings)?;
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

/// The settings a run is saved with: the configuration's, and for a data-parallel run its world
/// size and whether BatchNorm is synchronized (absent for one device, as in runs saved before
/// data-parallel training existed).
fn run_settings(
    config: &TrainConfig,
    world: usize,
    sync_batchnorm: bool,
) -> Result<serde_json::Value> {
    let mut settings = config.settings()?;
    if world > 1
        && let Some(map) = settings.as_object_mut()
    {
        map.insert("world".to_string(), world.into());
        map.insert("sync_batchnorm".to_string(), sync_batchnorm.into());
    }
    Ok(settings)
}
