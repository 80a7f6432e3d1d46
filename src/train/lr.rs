//! Learning-rate schedules. The rate of every step is a function of the settings, the epoch
//! and the step alone, so a resumed run takes the same rates as one that was never stopped.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the learning rate moves over a run, as PyTorch's schedulers move it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The optimizer's rate throughout.
    #[default]
    Constant,
    /// `StepLR`: the rate times `gamma` every `every` epochs (stepped per epoch).
    Step {
        /// Epochs between two decays.
        every: usize,
        /// Factor of each decay.
        gamma: f64,
    },
    /// `CosineAnnealingLR` to 0 over the epochs after warm-up (stepped per epoch).
    Cosine,
    /// `OneCycleLR` with PyTorch's defaults (stepped per batch): from rate/25 up to the rate over
    /// the first 30% of the steps, then down to rate/25/10⁴, both halves along a cosine. It warms
    /// up by itself.
    OneCycle,
}

/// The rates of a run: its schedule, the optimizer's rate and how long the run is.
#[derive(Clone, Copy, Debug)]
pub struct LrPlan {
    /// The optimizer's learning rate: the peak of every schedule.
    pub base: f64,
    /// The schedule.
    pub schedule: LrSchedule,
    /// Epochs of linear warm-up before the schedule starts (not with `OneCycle`).
    pub warmup_epochs: usize,
    /// Epochs of the whole run.
    pub epochs: usize,
    /// Steps in every epoch.
    pub steps_per_epoch: usize,
}

impl LrPlan {
    /// Refuses a plan that cannot run: a warm-up as long as the run, a step schedule that never
    /// decays or decays by a factor outside (0, 1], a warm-up beside `OneCycle`.
    pub fn validate(&self) -> Result<()> {
        if self.warmup_epochs > 0 && self.warmup_epochs >= self.epochs {
            return Err(Error::InvalidArgument(format!(
                "a warm-up of {} epochs leaves none of the {} epochs to the schedule",
                self.warmup_epochs, self.epochs
            )));
        }
        match self.schedule {
            LrSchedule::Step { every, gamma } if every == 0 || !(gamma > 0.0 && gamma <= 1.0) => {
                Err(Error::InvalidArgument(format!(
                    "a step schedule needs a decay every 1 or more epochs by a factor in (0, 1], \
                     got every {every} epochs by {gamma}"
                )))
            }
            LrSchedule::OneCycle if self.warmup_epochs > 0 => Err(Error::InvalidArgument(
                "the one-cycle schedule warms up by itself; it takes no warm-up epochs".to_string(),
            )),
            _ => Ok(()),
        }
    }

    /// The rate of `step` (0-based) of `epoch` (0-based).
    pub fn lr(&self, epoch: usize, step: usize) -> f64 {
        let global = epoch * self.steps_per_epoch + step;
        let warmup_steps = self.warmup_epochs * self.steps_per_epoch;
        if global < warmup_steps {
            return self.base * (global + 1) as f64 / warmup_steps as f64;
        }
        let after = (epoch - self.warmup_epochs) as f64;
        let span = (self.epochs - self.warmup_epochs) as f64;
        match self.schedule {
            LrSchedule::Constant => self.base,
            LrSchedule::Step { every, gamma } => {
                self.base * gamma.powi(((epoch - self.warmup_epochs) / every) as i32)
            }
            LrSchedule::Cosine => {
                self.base * (1.0 + (std::f64::consts::PI * after / span).cos()) / 2.0
            }
            LrSchedule::OneCycle => self.one_cycle(global),
        }
    }

    /// PyTorch's `OneCycleLR` (max_lr = base, pct_start 0.3, div_factor 25, final_div_factor 1e4,
    /// cosine annealing) at `step` of the whole run.
    fn one_cycle(&self, step: usize) -> f64 {
        let total = (self.epochs * self.steps_per_epoch) as f64;
        let initial = self.base / 25.0;
        let min = initial / 1e4;
        let peak_step = 0.3 * total - 1.0;
        let last_step = total - 1.0;
        let step = step as f64;
        let anneal = |start: f64, end: f64, pct: f64| {
            end + (start - end) / 2.0 * (1.0 + (std::f64::consts::PI * pct).cos())
        };
        if step <= peak_step {
            anneal(initial, self.base, step / peak_step.max(1.0))
        } else {
            anneal(
                self.base,
                min,
                (step - peak_step) / (last_step - peak_step).max(1.0),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: LrSchedule, warmup_epochs: usize) -> LrPlan {
        LrPlan {
            base: 0.1,
            schedule,
            warmup_epochs,
            epochs: 5,
            steps_per_epoch: 10,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
    }

    #[test]
    fn each_schedule_takes_pytorchs_rates() {
        let constant = plan(LrSchedule::Constant, 0);
        assert!((0..5).all(|e| constant.lr(e, 3) == 0.1));
        let step = plan(
            LrSchedule::Step {
                every: 2,
                gamma: 0.5,
            },
            0,
        );
        let per_epoch: Vec<f64> = (0..5).map(|e| step.lr(e, 0)).collect();
        assert_eq!(per_epoch, [0.1, 0.1, 0.05, 0.05, 0.025]);
        let cosine = plan(LrSchedule::Cosine, 0);
        assert!(close(cosine.lr(0, 9), 0.1));
        assert!(close(
            cosine.lr(2, 0),
            0.1 * (1.0 + (0.4 * std::f64::consts::PI).cos()) / 2.0
        ));
        // Warm-up: linear per step to the rate, then the schedule over the remaining epochs.
        let warm = plan(LrSchedule::Cosine, 1);
        assert!(close(warm.lr(0, 0), 0.01));
        assert!(close(warm.lr(0, 9), 0.1));
        assert!(close(warm.lr(1, 0), 0.1));
        assert!(close(
            warm.lr(3, 0),
            0.1 * (1.0 + (0.5 * std::f64::consts::PI).cos()) / 2.0
        ));
        // One cycle over 50 steps: 0.004 at the start, 0.1 at step 14 (30% − 1), 4e-7 at the end.
        let cycle = plan(LrSchedule::OneCycle, 0);
        assert!(close(cycle.lr(0, 0), 0.004));
        assert!(close(cycle.lr(1, 4), 0.1));
        assert!(close(cycle.lr(4, 9), 0.004 / 1e4));
        let rates: Vec<f64> = (0..50).map(|s| cycle.lr(s / 10, s % 10)).collect();
        assert!(rates[..15].windows(2).all(|w| w[0] < w[1]));
        assert!(rates[14..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn plans_that_cannot_run_are_refused() {
        let err = plan(LrSchedule::Cosine, 5)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("leaves none of the 5 epochs"), "{err}");
        let err = plan(
            LrSchedule::Step {
                every: 0,
                gamma: 0.1,
            },
            0,
        )
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("every 0 epochs"), "{err}");
        let err = plan(LrSchedule::OneCycle, 1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("warms up by itself"), "{err}");
        assert!(
            plan(
                LrSchedule::Step {
                    every: 2,
                    gamma: 0.1
                },
                1
            )
            .validate()
            .is_ok()
        );
    }
}
