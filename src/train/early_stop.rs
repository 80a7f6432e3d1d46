//! Early stopping on the validation loss, as Keras' `EarlyStopping(monitor="val_loss")`: a run
//! stops once `patience` epochs have passed without a lower validation loss than the best so
//! far. Decided from the epoch history alone, so a resumed run stops where it would have.

use super::EpochRecord;

/// Where a run stands against its patience.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStop {
    /// The epoch with the lowest finite validation loss (the first of equals) and that loss.
    pub best: Option<(usize, f64)>,
    /// Whether `patience` epochs have passed since `best` (or since the start, without one).
    pub stop: bool,
}

impl EarlyStop {
    /// Reads `history` (epochs in order) against `patience`.
    pub fn of(history: &[EpochRecord], patience: usize) -> Self {
        let mut best: Option<(usize, f64)> = None;
        for record in history {
            if let Some(loss) = record.val_loss.filter(|l| l.is_finite())
                && best.is_none_or(|(_, lowest)| loss < lowest)
            {
                best = Some((record.epoch, loss));
            }
        }
        let last = history.last().map_or(0, |r| r.epoch);
        let since = last - best.map_or(0, |(epoch, _)| epoch);
        Self {
            best,
            stop: since >= patience,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(losses: &[f64]) -> Vec<EpochRecord> {
        losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| EpochRecord {
                epoch: i + 1,
                train_loss: 0.0,
                train_acc: 0.0,
                val_loss: Some(loss),
                val_acc: None,
                resident_bytes: None,
                device_buffers: None,
                seconds: 0.0,
                training_seconds: 0.0,
                exchange_seconds: None,
                lr: 1e-3,
                grad_norms: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn stops_after_patience_epochs_without_a_lower_loss() {
        let improving = EarlyStop::of(&history(&[0.5, 0.4, 0.3]), 1);
        assert_eq!(improving.best, Some((3, 0.3)));
        assert!(!improving.stop);
        // Equal is no improvement: the first of equals stays best.
        let flat = history(&[0.5, 0.3, 0.3]);
        assert_eq!(EarlyStop::of(&flat, 1).best, Some((2, 0.3)));
        assert!(EarlyStop::of(&flat, 1).stop);
        assert!(!EarlyStop::of(&flat, 2).stop);
        let worse = history(&[0.5, 0.3, 0.4, 0.35]);
        assert!(!EarlyStop::of(&worse[..3], 2).stop);
        assert!(EarlyStop::of(&worse, 2).stop);
    }

    #[test]
    fn a_non_finite_loss_is_never_best() {
        let diverged = history(&[f64::NAN, f64::INFINITY]);
        assert_eq!(EarlyStop::of(&diverged, 3).best, None);
        assert!(!EarlyStop::of(&diverged, 3).stop);
        assert!(EarlyStop::of(&diverged, 2).stop);
        assert!(!EarlyStop::of(&[], 1).stop);
    }
}
