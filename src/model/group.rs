//! A `Classifier` as one rank of a data-parallel group: the caller gives each rank its slice of
//! every global batch, and the ranks train one model.

use super::Classifier;
use crate::distributed::{Collective, broadcast_state, check_same_settings, stopped_alone};
use crate::graph::Compute;
use crate::train::Share;
use crate::{Error, Result};

impl<B: Compute> Classifier<B> {
    /// Makes this classifier a replica of rank 0's: every rank of `group` calls it, with the
    /// same architecture and optimizer (compared first, and a difference refused by name), and
    /// rank 0's weights, running statistics, optimizer state and seed (which draws the dropout
    /// masks) are broadcast to the others.
    pub fn join(&mut self, backend: &B, group: &dyn Collective) -> Result<()> {
        let settings = [
            ("model".to_string(), self.spec().describe()),
            ("optimizer".to_string(), format!("{:?}", self.optimizer())),
        ];
        check_same_settings(group, &settings)?;
        broadcast_state(backend, group, &mut self.mlp, &mut self.optimizer)?;
        let mut seed = [self.seed];
        group.broadcast_u64(&mut seed, 0)?;
        self.seed = seed[0];
        Ok(())
    }

    /// One training step on this rank's slice of a global batch (`share`: the group, whether
    /// BatchNorm synchronizes, the slice's first row and the global batch's rows): `x` row-major
    /// rows × inputs, one label per row. Every rank of the group calls it for the same global
    /// batch; the gradients are summed over the group, so every replica takes the step one
    /// device would take on the whole batch. Every rank must pass the same
    /// `share.sync_batchnorm`. An error of this rank's alone (a bad label, a slice that does
    /// not fit) stops the group (`Collective::abort`), so that no rank waits for this one.
    pub fn train_slice(
        &mut self,
        backend: &B,
        share: Share,
        x: &[f32],
        labels: &[u32],
    ) -> Result<()> {
        let outcome = self.train_share(backend, share, x, labels);
        if let Err(error) = &outcome
            && stopped_alone(error)
        {
            share.group.abort(&error.to_string());
        }
        outcome
    }

    fn train_share(&mut self, backend: &B, share: Share, x: &[f32], labels: &[u32]) -> Result<()> {
        let rows = labels.len();
        if share.first_row + rows > share.batch_rows {
            return Err(Error::Shape(format!(
                "a slice of {rows} rows from row {} does not fit a global batch of {} rows",
                share.first_row, share.batch_rows
            )));
        }
        let labels = self.label_buffer(backend, x.len(), labels)?;
        crate::train::train_on_batch(
            backend,
            &mut self.mlp,
            &mut self.optimizer,
            self.seed,
            Some(share),
            backend.upload(x)?,
            &labels,
            &mut self.metrics,
            None,
        )?;
        backend.flush()
    }
}
