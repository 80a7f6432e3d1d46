//! What the experiment commands (`compare`, `sweep`) record per run, the statistics over
//! repeats, and readings that state only what the numbers show.

use serde::Serialize;

use wgnorm::train::EpochRecord;

/// One run of an experiment: finished, or stopped because its loss diverged.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub model: String,
    pub seed: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub epochs: Vec<EpochRecord>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    /// With BatchNorm: the test accuracy with each test batch (of the training batch size)
    /// normalized by its own statistics instead of the running ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc_batch_stats: Option<f64>,
    /// Why the run stopped early (a non-finite loss), if it did.
    pub diverged: Option<String>,
    /// Mean wall time of an epoch, validation included.
    pub seconds_per_epoch: Option<f64>,
    /// Training images per second of epoch wall time.
    pub samples_per_second: Option<f64>,
}

impl RunResult {
    pub fn last_epoch(&self) -> Option<&EpochRecord> {
        self.epochs.last()
    }
}

/// Mean and sample standard deviation (n − 1; 0 for a single value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Summary { mean, std, n })
}

impl Summary {
    /// "97.61 ± 0.06" with `scale` applied (100 for percentages).
    pub fn format(&self, scale: f64, decimals: usize) -> String {
        if self.n > 1 {
            format!(
                "{:.*} ± {:.*}",
                decimals,
                self.mean * scale,
                decimals,
                self.std * scale
            )
        } else {
            format!("{:.*}", decimals, self.mean * scale)
        }
    }
}

/// The first epoch (1-based) whose validation accuracy reached `threshold`.
pub fn first_epoch_reaching(epochs: &[EpochRecord], threshold: f64) -> Option<usize> {
    epochs
        .iter()
        .find(|e| e.val_acc.is_some_and(|acc| acc >= threshold))
        .map(|e| e.epoch)
}

/// How two sets of runs differ on one measure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// Fewer than two runs on a side: no spread to judge a difference against.
    NoSpread { difference: f64 },
    /// |difference of means| > 2 standard errors of that difference.
    Apart {
        difference: f64,
        standard_error: f64,
    },
    WithinNoise {
        difference: f64,
        standard_error: f64,
    },
}

/// Compares `b` against `a` (difference = mean b − mean a).
pub fn read_difference(a: &[f64], b: &[f64]) -> Option<Reading> {
    let (sa, sb) = (summarize(a)?, summarize(b)?);
    let difference = sb.mean - sa.mean;
    if sa.n < 2 || sb.n < 2 {
        return Some(Reading::NoSpread { difference });
    }
    let standard_error = (sa.std.powi(2) / sa.n as f64 + sb.std.powi(2) / sb.n as f64).sqrt();
    Some(if difference.abs() > 2.0 * standard_error {
        Reading::Apart {
            difference,
            standard_error,
        }
    } else {
        Reading::WithinNoise {
            difference,
            standard_error,
        }
    })
}

impl Reading {
    /// One sentence on measure `what` (scaled by `scale`, in `unit`, with `decimals` digits)
    /// of `b` against `a`.
    pub fn sentence(
        &self,
        what: &str,
        (a, b): (&str, &str),
        scale: f64,
        unit: &str,
        decimals: usize,
    ) -> String {
        let d = decimals;
        let direction = |d: f64| if d > 0.0 { "higher" } else { "lower" };
        match *self {
            Reading::NoSpread { difference } => format!(
                "{what}: {b} is {:.d$}{unit} {} than {a} in a single run each; with one run \
                 there is no spread to tell this from noise (use --repeats).",
                (difference * scale).abs(),
                direction(difference)
            ),
            Reading::Apart {
                difference,
                standard_error,
            } => format!(
                "{what}: {b} is {:.d$}{unit} {} than {a}, more than twice the standard error \
                 of the difference ({:.d$}{unit}).",
                (difference * scale).abs(),
                direction(difference),
                standard_error * scale
            ),
            Reading::WithinNoise {
                difference,
                standard_error,
            } => format!(
                "{what}: {b} and {a} differ by {:.d$}{unit}, within twice the standard error \
                 of the difference ({:.d$}{unit}): not distinguishable from noise in these runs.",
                (difference * scale).abs(),
                standard_error * scale
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_the_sample_standard_deviation() {
        let s = summarize(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 3));
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[4.0]).unwrap().std, 0.0);
    }

    #[test]
    fn differences_are_judged_against_their_standard_error() {
        let apart = read_difference(&[0.90, 0.91, 0.92], &[0.97, 0.98, 0.99]).unwrap();
        assert!(matches!(apart, Reading::Apart { .. }), "{apart:?}");
        let noise = read_difference(&[0.90, 0.95, 1.00], &[0.91, 0.96, 0.99]).unwrap();
        assert!(matches!(noise, Reading::WithinNoise { .. }), "{noise:?}");
        let single = read_difference(&[0.9], &[0.95]).unwrap();
        assert!(matches!(single, Reading::NoSpread { .. }), "{single:?}");
    }
}
