//! BatchNorm's settings, checked when they are made (and when they are read from a file).

use crate::{Error, Result};

/// BatchNorm's settings, valid by construction (`new` checks them; PyTorch's are the default:
/// eps 1e-5, momentum 0.1 weighting the new batch value, unbiased running variance, statistics
/// over the whole batch).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "BatchNormConfigFields")]
pub struct BatchNormConfig {
    eps: f32,
    momentum: f32,
    unbiased_running_var: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    virtual_batch: Option<usize>,
}

/// The fields as a file holds them, checked by `BatchNormConfig::new` on the way in.
#[derive(serde::Deserialize)]
struct BatchNormConfigFields {
    eps: f32,
    momentum: f32,
    unbiased_running_var: bool,
    #[serde(default)]
    virtual_batch: Option<usize>,
}

impl TryFrom<BatchNormConfigFields> for BatchNormConfig {
    type Error = Error;

    fn try_from(fields: BatchNormConfigFields) -> Result<Self> {
        let config = Self::new(fields.eps, fields.momentum, fields.unbiased_running_var)?;
        match fields.virtual_batch {
            Some(samples) => config.with_virtual_batch(samples),
            None => Ok(config),
        }
    }
}

impl BatchNormConfig {
    /// `eps` is added to the variance before the square root and must be positive and finite;
    /// `momentum`, the weight of the new batch value in the running statistics, lies in [0, 1].
    /// PyTorch updates the running variance with the unbiased batch variance (·m/(m − 1)),
    /// Keras with the biased one (`unbiased_running_var` false).
    pub fn new(eps: f32, momentum: f32, unbiased_running_var: bool) -> Result<Self> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "BatchNorm eps must be a positive finite number, got {eps}"
            )));
        }
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::InvalidArgument(format!(
                "BatchNorm momentum must lie in [0, 1], got {momentum}"
            )));
        }
        Ok(Self {
            eps,
            momentum,
            unbiased_running_var,
            virtual_batch: None,
        })
    }

    /// The same settings with another momentum.
    pub fn with_momentum(self, momentum: f32) -> Result<Self> {
        Ok(Self {
            momentum: Self::new(self.eps, momentum, self.unbiased_running_var)?.momentum,
            ..self
        })
    }

    /// Ghost batches (Keras' `virtual_batch_size`): in training, statistics over each run of
    /// `samples` consecutive samples of a batch instead of the whole batch, and the running
    /// statistics updated once per batch with the mean of the ghost batches' statistics.
    /// Evaluation is unchanged. A training batch must then be a multiple of `samples`. The
    /// model's BatchNorm layers read it to view each training batch in ghost batches
    /// (`BatchNormShape::with_ghost_batches`, which is what the ops themselves take).
    pub fn with_virtual_batch(self, samples: usize) -> Result<Self> {
        if samples == 0 {
            return Err(Error::InvalidArgument(
                "BatchNorm's virtual batch must hold at least 1 sample, got 0".to_string(),
            ));
        }
        Ok(Self {
            virtual_batch: Some(samples),
            ..self
        })
    }

    /// Samples per ghost batch in training, if the statistics are not over the whole batch.
    pub fn virtual_batch(&self) -> Option<usize> {
        self.virtual_batch
    }

    /// The ghost batches a training batch of `samples` samples splits into: refuses a batch
    /// that is not a multiple of the virtual batch.
    pub fn ghost_batches(&self, samples: usize) -> Result<usize> {
        match self.virtual_batch {
            None => Ok(1),
            Some(virtual_batch) if samples.is_multiple_of(virtual_batch) => {
                Ok(samples / virtual_batch)
            }
            Some(virtual_batch) => Err(Error::InvalidArgument(format!(
                "a training batch of {samples} samples is not a multiple of BatchNorm's virtual \
                 batch of {virtual_batch}"
            ))),
        }
    }

    /// Added to the variance before the square root.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Weight of the new batch value in the running statistics.
    pub fn momentum(&self) -> f32 {
        self.momentum
    }

    /// Whether the running variance takes the unbiased batch variance (PyTorch) or the biased
    /// one (Keras).
    pub fn unbiased_running_var(&self) -> bool {
        self.unbiased_running_var
    }

    /// What the batch variance of `m` values per channel is multiplied by before it enters the
    /// running variance: m/(m − 1) for the unbiased estimate, 1 for the biased one.
    pub fn running_var_factor(&self, m: usize) -> f32 {
        let m = m as f32;
        if self.unbiased_running_var {
            m / (m - 1.0)
        } else {
            1.0
        }
    }
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            unbiased_running_var: true,
            virtual_batch: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_checked_when_it_is_made_and_when_it_is_read() {
        let err = BatchNormConfig::new(0.0, 0.1, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eps must be a positive finite number"),
            "{err}"
        );
        let err = BatchNormConfig::new(1e-5, 1.5, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("momentum must lie in [0, 1]"), "{err}");
        let read: std::result::Result<BatchNormConfig, _> =
            serde_json::from_str(r#"{"eps": -1.0, "momentum": 0.1, "unbiased_running_var": true}"#);
        assert!(read.unwrap_err().to_string().contains("eps"));
    }
}
