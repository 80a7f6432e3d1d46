//! BatchNorm's settings, checked when they are made (and when they are read from a file).

use crate::{Error, Result};

/// BatchNorm's settings, valid by construction (`new` checks them; PyTorch's are the default:
/// eps 1e-5, momentum 0.1 weighting the new batch value, unbiased running variance).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "BatchNormConfigFields")]
pub struct BatchNormConfig {
    eps: f32,
    momentum: f32,
    unbiased_running_var: bool,
}

/// The fields as a file holds them, checked by `BatchNormConfig::new` on the way in.
#[derive(serde::Deserialize)]
struct BatchNormConfigFields {
    eps: f32,
    momentum: f32,
    unbiased_running_var: bool,
}

impl TryFrom<BatchNormConfigFields> for BatchNormConfig {
    type Error = Error;

    fn try_from(fields: BatchNormConfigFields) -> Result<Self> {
        Self::new(fields.eps, fields.momentum, fields.unbiased_running_var)
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
        })
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
