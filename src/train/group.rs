//! Training as one rank of a data-parallel group (`Trainer::join`): the start, what a group
//! refuses, and the running totals reduced over the ranks.

use std::rc::Rc;

use super::{TrainConfig, Trainer, batches, split_point};
use crate::distributed::{self, Collective, RankSlice, Timed, broadcast_state, global_batches};
use crate::graph::Compute;
use crate::ops::loss::LossTotals;
use crate::{Error, Result};

/// A data-parallel rank's part in a training step: its slice of the group's global batch.
#[derive(Clone, Copy)]
pub struct Share<'g> {
    /// The group.
    pub group: &'g Rc<dyn Collective>,
    /// Whether BatchNorm normalizes by the whole global batch (synchronized BatchNorm) rather
    /// than by this rank's slice.
    pub sync_batchnorm: bool,
    /// Rows of the global batch ahead of this rank's.
    pub first_row: usize,
    /// Rows of the global batch.
    pub batch_rows: usize,
}

/// With a data-parallel group, the running totals are read (and reduced over the group) every
/// this many steps, the same steps on every rank, instead of every `REPORT_INTERVAL`.
pub const GROUP_REPORT_STEPS: usize = 50;

impl<B: Compute> Trainer<'_, B> {
    /// Trains as one rank of `group` from now on (data-parallel): rank 0's model and optimizer
    /// state are broadcast to every rank and every rank's settings compared first; each step
    /// then trains on this rank's slice of a global batch of `batch_size` × world rows
    /// (`distributed::RankSlice`) and sums the gradients over the group. With
    /// `sync_batchnorm`, BatchNorm normalizes by the statistics of the whole global batch;
    /// without, by each rank's slice.
    pub fn join(&mut self, group: Rc<dyn Collective>, sync_batchnorm: bool) -> Result<()> {
        // Compared first, so that the checks below fail on every rank alike or on none.
        let mut settings = settings_of(&self.config)?;
        settings.extend([
            (
                "synchronized BatchNorm".to_string(),
                sync_batchnorm.to_string(),
            ),
            ("training images".to_string(), self.train_rows.to_string()),
            ("test images".to_string(), self.test_rows.to_string()),
            ("epochs done".to_string(), self.epochs_done.to_string()),
            (
                "optimizer steps".to_string(),
                self.optimizer.steps.to_string(),
            ),
            (
                "--log-grad-norms".to_string(),
                format!("{:?}", self.config.log_grad_norms),
            ),
        ]);
        distributed::check_same_settings(&*group, &settings)?;
        let checked = self.check_group(group.world(), sync_batchnorm);
        distributed::agree(&*group, checked)?;
        let shares = self.take_evaluation_shares(group.rank(), group.world());
        distributed::agree(&*group, shares)?;
        broadcast_state(self.backend, &*group, &mut self.model, &mut self.optimizer)?;
        let timed = Rc::new(Timed::new(group));
        self.group = Some(timed.clone());
        self.exchange_time = Some(timed);
        self.sync_batchnorm = sync_batchnorm;
        Ok(())
    }

    /// Rank `rank`'s shares of the validation and the test images (`RankSlice`): each rank
    /// scores a run of them and the totals are summed over the group.
    fn take_evaluation_shares(&mut self, rank: usize, world: usize) -> Result<()> {
        let backend = self.backend;
        let share_of = |first: usize, rows: usize| -> Result<_> {
            let share = RankSlice::of(rows, rank, world)?;
            let start = first + share.offset;
            let index: Vec<u32> = (start..start + share.rows).map(|row| row as u32).collect();
            Ok((backend.upload_indices(&index)?, share.rows))
        };
        if let Some((_, rows)) = self.validation {
            let first = split_point(self.train_set.rows, self.config.val_split);
            self.validation = Some(share_of(first, rows)?);
        }
        (self.test_index, self.test_rows) = share_of(0, self.test_rows)?;
        Ok(())
    }

    /// `own` totals summed over the group, where this trainer is a rank of one.
    pub(super) fn over_group(&self, own: Result<LossTotals>) -> Result<LossTotals> {
        match &self.group {
            Some(group) => group_totals(&**group, own),
            None => own,
        }
    }

    /// What a group of `world` ranks cannot train, refused by name before the first step.
    fn check_group(&self, world: usize, sync_batchnorm: bool) -> Result<()> {
        let spec = &self.config.spec;
        let validation_rows = self.validation.as_ref().map_or(world, |&(_, rows)| rows);
        for (images, rows) in [("validation", validation_rows), ("test", self.test_rows)] {
            if rows < world {
                return Err(Error::InvalidArgument(format!(
                    "{rows} {images} images cannot give each of {world} ranks one"
                )));
            }
        }
        if world > 1 && self.config.log_grad_norms.is_some() {
            return Err(Error::InvalidArgument(
                "--log-grad-norms logs one device's gradients; it does not combine with \
                 data-parallel training"
                    .to_string(),
            ));
        }
        if self.train_rows < world {
            return Err(Error::InvalidArgument(format!(
                "{} training images cannot give each of {world} ranks one",
                self.train_rows
            )));
        }
        let virtual_batch = spec.batchnorm_config().virtual_batch();
        if sync_batchnorm && spec.has_batchnorm() && virtual_batch.is_some() {
            return Err(Error::InvalidArgument(
                "ghost batches (--bn-virtual-batch) split each rank's batch on its own; they do \
                 not combine with synchronized BatchNorm"
                    .to_string(),
            ));
        }
        let plan = global_batches(
            batches(
                self.train_rows,
                self.config.batch_size * world,
                self.config.drop_last,
            ),
            world,
        );
        let smallest = plan
            .iter()
            .map(|&(_, rows)| rows / world)
            .min()
            .unwrap_or(0);
        if !sync_batchnorm && spec.has_batchnorm() && smallest < 2 {
            return Err(Error::InvalidArgument(format!(
                "a batch of {} images leaves a rank {smallest} of them, and BatchNorm without \
                 synchronization cannot normalize a batch of one; choose another --batch-size \
                 or pass --drop-last",
                plan.iter().map(|&(_, rows)| rows).min().unwrap_or(0)
            )));
        }
        Ok(())
    }
}

/// The run's settings by name, as every rank of a group must share them: those a resumed run
/// keeps, and the epochs.
fn settings_of(config: &TrainConfig) -> Result<Vec<(String, String)>> {
    let serde_json::Value::Object(fields) = config.settings()? else {
        return Err(Error::InvalidArgument(
            "the settings are not a record".to_string(),
        ));
    };
    let mut settings: Vec<(String, String)> = (fields.into_iter())
        .map(|(name, value)| (name, value.to_string()))
        .collect();
    settings.push(("epochs".to_string(), config.epochs.to_string()));
    Ok(settings)
}

/// Every rank's totals, summed (in f64, in rank order), and the earliest step at which any
/// rank's loss was not finite; where one rank failed (a bad label in its slice, a lost device),
/// its error on every rank.
fn group_totals(group: &dyn Collective, own: Result<LossTotals>) -> Result<LossTotals> {
    let own = distributed::agree(group, own)?;
    let mine = [
        own.loss_sum.to_bits(),
        own.correct.to_bits(),
        own.samples.to_bits(),
        own.first_non_finite_step.unwrap_or(0),
    ];
    let ranks = group.all_gather_u64(&mine)?;
    let ranks: Vec<&[u64]> = ranks.chunks_exact(mine.len()).collect();
    let sum = |field: usize| {
        ranks
            .iter()
            .map(|values| f64::from_bits(values[field]))
            .sum()
    };
    Ok(LossTotals {
        loss_sum: sum(0),
        correct: sum(1),
        samples: sum(2),
        first_non_finite_step: ranks
            .iter()
            .map(|values| values[3])
            .filter(|&s| s > 0)
            .min(),
    })
}
