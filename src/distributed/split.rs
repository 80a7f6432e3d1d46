//! How a global batch is split over the ranks.
//!
//! A step trains on `--batch-size` × world rows of the epoch's order (one permutation from the
//! seed and the epoch, the same on every rank). Rank r takes a run of consecutive rows of that
//! global batch, in rank order. The last batch of an epoch may be shorter: its rows are shared
//! as evenly as possible, the first `rows % world` ranks taking one row more. A last batch with
//! fewer rows than ranks is not trained on (every rank needs a row), as with `--drop-last`.

use crate::{Error, Result};

/// The rows of a global batch that one rank trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankSlice {
    /// Rows of the global batch ahead of this rank's.
    pub offset: usize,
    /// This rank's rows.
    pub rows: usize,
}

impl RankSlice {
    /// Rank `rank`'s slice of a global batch of `rows` split over `world` ranks.
    pub fn of(rows: usize, rank: usize, world: usize) -> Result<Self> {
        if rank >= world || rows < world {
            return Err(Error::InvalidArgument(format!(
                "a batch of {rows} rows cannot give rank {rank} of {world} a row"
            )));
        }
        let (base, extra) = (rows / world, rows % world);
        Ok(Self {
            offset: rank * base + rank.min(extra),
            rows: base + usize::from(rank < extra),
        })
    }
}

/// The global batches an epoch trains on, as (first row, rows) of the epoch's order, for
/// `world` ranks: `plan` without a last batch too short to give every rank a row.
pub fn global_batches(mut plan: Vec<(usize, usize)>, world: usize) -> Vec<(usize, usize)> {
    if plan.last().is_some_and(|&(_, rows)| rows < world) {
        plan.pop();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_batch_in_rank_order_and_differ_by_at_most_one_row() {
        for world in 1..=5 {
            for rows in world..=3 * world + 2 {
                let slices: Vec<RankSlice> = (0..world)
                    .map(|rank| RankSlice::of(rows, rank, world).unwrap())
                    .collect();
                let mut next = 0;
                for slice in &slices {
                    assert_eq!(slice.offset, next, "{rows} rows over {world}");
                    assert!(slice.rows >= 1);
                    next += slice.rows;
                }
                assert_eq!(next, rows);
                let (least, most) = (
                    slices.iter().map(|s| s.rows).min(),
                    slices.iter().map(|s| s.rows).max(),
                );
                assert!(most.unwrap() - least.unwrap() <= 1);
            }
        }
        assert_eq!(
            RankSlice::of(7, 2, 3).unwrap(),
            RankSlice { offset: 5, rows: 2 }
        );
    }

    #[test]
    fn a_batch_smaller_than_the_world_is_refused_and_not_planned() {
        assert!(RankSlice::of(2, 0, 3).is_err());
        assert!(RankSlice::of(9, 3, 3).is_err());
        assert_eq!(global_batches(vec![(0, 6), (6, 2)], 3), vec![(0, 6)]);
        assert_eq!(
            global_batches(vec![(0, 6), (6, 3)], 3),
            vec![(0, 6), (6, 3)]
        );
    }
}
