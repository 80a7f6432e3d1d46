//! What defines a run: `TrainConfig`, its checks, and the settings a resumed run must share.

use serde::Serialize;

use super::{LrPlan, LrSchedule, split_point};
use crate::graph::{Init, ModelSpec};
use crate::optim::OptimizerConfig;
use crate::{Dtype, Error, Result};

/// Everything that defines a run; two runs with equal configs compute the same thing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainConfig {
    /// The architecture.
    pub spec: ModelSpec,
    /// How the weights start.
    pub init: Init,
    /// Optimizer and learning rate.
    pub optimizer: OptimizerConfig,
    /// Epochs to train.
    pub epochs: usize,
    /// Rows per training step.
    pub batch_size: usize,
    /// Fraction of the training images held out for validation, taken from the end (Keras'
    /// `validation_split`).
    pub val_split: f64,
    /// Seed of the weights, the shuffles and the dropout masks.
    pub seed: u64,
    /// Train on the first N images of the training part only.
    pub train_limit: Option<usize>,
    /// How hidden activations are stored (`Sequential::activations`).
    pub activations: Dtype,
    /// Skip each epoch's last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// How the learning rate moves over the run (left out of the settings while constant, so
    /// runs saved before schedules existed resume).
    #[serde(skip_serializing_if = "is_constant")]
    pub lr_schedule: LrSchedule,
    /// Epochs of linear learning-rate warm-up (left out of the settings while 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub warmup_epochs: usize,
    /// Stop once this many epochs pass without a lower validation loss (`EarlyStop`); left out
    /// of the settings when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Log gradient norms every this many steps (`GradNormLog`). Logging changes nothing the
    /// run computes, so it is not one of the settings a resumed run must share.
    #[serde(skip)]
    pub log_grad_norms: Option<u64>,
}

fn is_constant(schedule: &LrSchedule) -> bool {
    *schedule == LrSchedule::Constant
}

fn is_zero(epochs: &usize) -> bool {
    *epochs == 0
}

impl TrainConfig {
    /// The reference experiment: the 784-128-10 MLP (with or without BatchNorm), Keras
    /// initialization, Adam at 1e-3, 5 epochs, the last 10% held out for validation, seed 0.
    pub fn reference(batchnorm: bool, batch_size: usize) -> Self {
        Self {
            spec: ModelSpec::reference_mlp(batchnorm),
            init: Init::Keras,
            optimizer: OptimizerConfig::adam(1e-3),
            epochs: 5,
            batch_size,
            val_split: 0.1,
            seed: 0,
            train_limit: None,
            activations: Dtype::F32,
            drop_last: false,
            lr_schedule: LrSchedule::Constant,
            warmup_epochs: 0,
            patience: None,
            log_grad_norms: None,
        }
    }

    /// The learning rates of the run, given its steps per epoch.
    pub fn lr_plan(&self, steps_per_epoch: usize) -> LrPlan {
        LrPlan {
            base: self.optimizer.lr(),
            schedule: self.lr_schedule,
            warmup_epochs: self.warmup_epochs,
            epochs: self.epochs,
            steps_per_epoch,
        }
    }

    /// Refuses settings that cannot run (zero batch, split outside [0, 1), …).
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        self.lr_plan(1).validate()?;
        if self.epochs == 0 {
            return Err(Error::InvalidArgument(
                "epochs must be at least 1".to_string(),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".to_string(),
            ));
        }
        if self.spec.has_batchnorm() && self.batch_size < 2 {
            return Err(Error::InvalidArgument(
                "batch size 1 is too small with BatchNorm: its statistics need at least 2 \
                 samples per batch in training"
                    .to_string(),
            ));
        }
        if !(0.0..1.0).contains(&self.val_split) {
            return Err(Error::InvalidArgument(format!(
                "validation split must be in [0, 1), got {}",
                self.val_split
            )));
        }
        if self.patience == Some(0) {
            return Err(Error::InvalidArgument(
                "patience must be at least 1 epoch".to_string(),
            ));
        }
        if self.patience.is_some() && self.val_split == 0.0 {
            return Err(Error::InvalidArgument(
                "early stopping watches the validation loss, but the validation split is 0"
                    .to_string(),
            ));
        }
        if self.log_grad_norms == Some(0) {
            return Err(Error::InvalidArgument(
                "gradient norms are logged every N steps, N at least 1".to_string(),
            ));
        }
        if self.train_limit == Some(0) {
            return Err(Error::InvalidArgument(
                "train limit must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    /// How many of `available` training images a run trains on: those the validation split
    /// leaves, or the first `train_limit` of them. A limit beyond them is refused, not cut.
    pub fn training_images(&self, available: usize) -> Result<usize> {
        let split_at = split_point(available, self.val_split);
        if split_at == 0 {
            return Err(Error::InvalidArgument(
                "the validation split leaves no training images".to_string(),
            ));
        }
        match self.train_limit {
            Some(limit) if limit > split_at => Err(Error::InvalidArgument(format!(
                "a limit of {limit} images is more than the {split_at} training images the \
                 validation split leaves of {available}"
            ))),
            Some(limit) => Ok(limit),
            None => Ok(split_at),
        }
    }

    /// The settings a resumed run must share with the run it continues: all but `epochs`, which
    /// may grow, unless the learning-rate schedule spreads itself over the run's length (cosine,
    /// one-cycle), where another length would change the rates of the epochs already trained.
    pub fn settings(&self) -> Result<serde_json::Value> {
        let mut value = serde_json::to_value(self)?;
        let spread = matches!(self.lr_schedule, LrSchedule::Cosine | LrSchedule::OneCycle);
        if let Some(map) = value.as_object_mut()
            && !spread
        {
            map.remove("epochs");
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON written for a run's settings used to fall back to an empty value if serializing
    /// failed. It cannot fail for these types (string keys only; a non-finite float is written
    /// as null), so the fallback never fired; errors now propagate instead of being swallowed.
    #[test]
    fn settings_serialize_even_with_non_finite_values() -> Result<()> {
        let mut config = TrainConfig::reference(true, 32);
        config.val_split = f64::NAN;
        let settings = config.settings()?;
        assert!(settings["val_split"].is_null());
        assert!(settings.get("epochs").is_none());
        assert_eq!(settings["batch_size"], 32);
        Ok(())
    }
}
