//! Several ranks in one process, one thread each: every collective is a rendezvous in which
//! each rank leaves its values and reads everyone's.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{Collective, check_root, sum_in_rank_order};
use crate::{Error, Result};

/// What one rank leaves at a rendezvous.
#[derive(Clone, Debug, PartialEq)]
enum Values {
    F32(Vec<f32>),
    U64(Vec<u64>),
    /// A barrier's, or a broadcast's from a rank other than the root.
    Nothing,
}

impl Values {
    fn describe(&self) -> String {
        match self {
            Values::F32(values) => format!("{} f32 values", values.len()),
            Values::U64(values) => format!("{} u64 values", values.len()),
            Values::Nothing => "nothing".to_string(),
        }
    }
}

/// What one rank brings to a rendezvous: the collective, its root (broadcasts), its values.
type Deposit = (&'static str, usize, Values);

/// One rendezvous after another.
struct State {
    /// Rendezvous completed so far.
    generation: u64,
    /// What each rank left at the open rendezvous.
    deposits: Vec<Option<Deposit>>,
    /// Every rank's deposit at the last completed rendezvous, in rank order.
    completed: Arc<Vec<Deposit>>,
    /// Why the group can no longer meet: a rank that failed or left.
    broken: Option<String>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left nothing half-written that matters:
        // the group is broken either way.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn break_with(&self, why: String) {
        let mut state = self.lock();
        if state.broken.is_none() {
            state.broken = Some(why);
        }
        self.changed.notify_all();
    }
}

/// Creates the ranks of a group in one process.
pub struct LocalGroup;

impl LocalGroup {
    /// `world` ranks, to be moved one to each thread. A rank that is dropped (its thread ended,
    /// or failed) breaks the group: every collective the others call after that returns an
    /// error naming it, so no thread waits forever for it.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Result<Vec<LocalRank>> {
        if world == 0 {
            return Err(Error::InvalidArgument(
                "a group needs at least one rank".to_string(),
            ));
        }
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                generation: 0,
                deposits: vec![None; world],
                completed: Arc::new(Vec::new()),
                broken: None,
            }),
            changed: Condvar::new(),
        });
        Ok((0..world)
            .map(|rank| LocalRank {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }
}

/// One rank of a [`LocalGroup`].
pub struct LocalRank {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalRank {
    /// Leaves `values` under `op` (from `root`, for a broadcast) and returns every rank's
    /// deposit, in rank order, once all have come.
    fn meet(&self, op: &'static str, root: usize, values: Values) -> Result<Arc<Vec<Deposit>>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if let Some(why) = &state.broken {
            return Err(Error::Distributed(why.clone()));
        }
        let generation = state.generation;
        state.deposits[self.rank] = Some((op, root, values));
        if state.deposits.iter().all(Option::is_some) {
            let deposits = state
                .deposits
                .iter_mut()
                .map(|d| d.take().unwrap_or(("", 0, Values::Nothing)));
            state.completed = Arc::new(deposits.collect());
            state.generation += 1;
            shared.changed.notify_all();
        } else {
            state = shared
                .changed
                .wait_while(state, |s| s.generation == generation && s.broken.is_none())
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.generation == generation {
                let why = state.broken.clone().unwrap_or_default();
                return Err(Error::Distributed(why));
            }
        }
        let completed = state.completed.clone();
        drop(state);
        check_agreement(&completed)?;
        Ok(completed)
    }

    fn f32s(&self, op: &'static str, values: &[f32]) -> Result<Vec<Vec<f32>>> {
        (self.meet(op, 0, Values::F32(values.to_vec()))?.iter())
            .map(|(_, _, values)| match values {
                Values::F32(values) => Ok(values.clone()),
                other => Err(mismatch(op, other)),
            })
            .collect()
    }

    fn u64s(&self, op: &'static str, values: &[u64]) -> Result<Vec<Vec<u64>>> {
        (self.meet(op, 0, Values::U64(values.to_vec()))?.iter())
            .map(|(_, _, values)| match values {
                Values::U64(values) => Ok(values.clone()),
                other => Err(mismatch(op, other)),
            })
            .collect()
    }

    /// The root's values of a broadcast.
    fn broadcast_values(&self, values: Values, root: usize) -> Result<Values> {
        check_root(root, self.shared.world)?;
        let mine = if self.rank == root {
            values
        } else {
            Values::Nothing
        };
        let completed = self.meet("broadcast", root, mine)?;
        Ok(completed[root].2.clone())
    }
}

/// Every rank must have called the same collective, from the same root, with values of the
/// same kind and length.
fn check_agreement(completed: &[Deposit]) -> Result<()> {
    let Some((op, root, first)) = completed.first() else {
        return Ok(());
    };
    for (rank, (other_op, other_root, values)) in completed.iter().enumerate().skip(1) {
        if other_root != root {
            return Err(Error::Distributed(format!(
                "the ranks are out of step: rank 0 broadcast from rank {root}, rank {rank} from \
                 rank {other_root}"
            )));
        }
        let same_shape = match (first, values) {
            (Values::F32(a), Values::F32(b)) => a.len() == b.len(),
            (Values::U64(a), Values::U64(b)) => a.len() == b.len(),
            (Values::Nothing, Values::Nothing) => true,
            // Only the root sends a broadcast's values.
            _ => *op == "broadcast",
        };
        if other_op != op || !same_shape {
            return Err(Error::Distributed(format!(
                "the ranks are out of step: rank 0 called {op} with {}, rank {rank} called \
                 {other_op} with {}",
                first.describe(),
                values.describe()
            )));
        }
    }
    Ok(())
}

fn mismatch(op: &str, values: &Values) -> Error {
    Error::Distributed(format!(
        "the ranks are out of step: a rank sent {} to {op}",
        values.describe()
    ))
}

impl Drop for LocalRank {
    fn drop(&mut self) {
        self.shared
            .break_with(format!("rank {} left the group", self.rank));
    }
}

impl Collective for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        let gathered = self.f32s("all_reduce_sum", values)?.concat();
        sum_in_rank_order(&gathered, values);
        Ok(())
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()> {
        let gathered = self.u64s("all_reduce_sum_u64", values)?;
        values.fill(0);
        for row in gathered {
            for (sum, value) in values.iter_mut().zip(row) {
                *sum = sum.wrapping_add(value);
            }
        }
        Ok(())
    }

    fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(self.f32s("all_gather", values)?.concat())
    }

    fn all_gather_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
        Ok(self.u64s("all_gather_u64", values)?.concat())
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<()> {
        match self.broadcast_values(Values::F32(values.to_vec()), root)? {
            Values::F32(root_values) if root_values.len() == values.len() => {
                values.copy_from_slice(&root_values);
                Ok(())
            }
            other => Err(broadcast_mismatch(values.len(), &other)),
        }
    }

    fn broadcast_u64(&self, values: &mut [u64], root: usize) -> Result<()> {
        match self.broadcast_values(Values::U64(values.to_vec()), root)? {
            Values::U64(root_values) if root_values.len() == values.len() => {
                values.copy_from_slice(&root_values);
                Ok(())
            }
            other => Err(broadcast_mismatch(values.len(), &other)),
        }
    }

    fn barrier(&self) -> Result<()> {
        self.meet("barrier", 0, Values::Nothing).map(drop)
    }

    fn abort(&self, why: &str) {
        self.shared
            .break_with(format!("rank {} failed: {why}", self.rank));
    }
}

fn broadcast_mismatch(len: usize, root: &Values) -> Error {
    Error::Distributed(format!(
        "the ranks are out of step: a broadcast of {len} values received {}",
        root.describe()
    ))
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    /// Runs `body` on every rank of a group of `world`, each on its own thread.
    fn on_every_rank<T: Send + 'static>(
        world: usize,
        body: impl Fn(&LocalRank) -> Result<T> + Send + Sync + 'static,
    ) -> Vec<Result<T>> {
        let body = Arc::new(body);
        let threads: Vec<_> = (LocalGroup::new(world).unwrap().into_iter())
            .map(|rank| {
                let body = body.clone();
                thread::spawn(move || body(&rank))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn every_rank_gets_the_same_sums_gathers_and_broadcasts() {
        let results = on_every_rank(3, |rank| {
            let r = rank.rank() as f32;
            let mut sums = vec![r, 10.0 * r];
            rank.all_reduce_sum(&mut sums)?;
            let mut counts = vec![rank.rank() as u64 + 1];
            rank.all_reduce_sum_u64(&mut counts)?;
            let gathered = rank.all_gather(&[r])?;
            let mut from_two = vec![r; 2];
            rank.broadcast(&mut from_two, 2)?;
            rank.barrier()?;
            Ok((sums, counts, gathered, from_two))
        });
        for result in results {
            let (sums, counts, gathered, from_two) = result.unwrap();
            assert_eq!(sums, [3.0, 30.0]);
            assert_eq!(counts, [6]);
            assert_eq!(gathered, [0.0, 1.0, 2.0]);
            assert_eq!(from_two, [2.0, 2.0]);
        }
    }

    #[test]
    fn a_rank_that_stops_early_fails_the_others_instead_of_hanging() {
        let results = on_every_rank(3, |rank| {
            if rank.rank() == 1 {
                return Err(Error::InvalidArgument("no data".to_string()));
            }
            rank.barrier()?;
            rank.barrier()
        });
        for (rank, result) in results.iter().enumerate() {
            let message = result.as_ref().unwrap_err().to_string();
            let expected = if rank == 1 {
                "no data"
            } else {
                "rank 1 left the group"
            };
            assert!(message.contains(expected), "rank {rank}: {message}");
        }
    }

    #[test]
    fn ranks_out_of_step_are_told_so() {
        type Call = fn(&LocalRank) -> Result<()>;
        let mismatches: [[Call; 2]; 3] = [
            [
                |r| r.all_gather(&[1.0]).map(drop),
                |r| r.all_gather(&[1.0, 2.0]).map(drop),
            ],
            [
                |r| r.all_gather(&[1.0]).map(drop),
                |r| r.all_reduce_sum(&mut [1.0]),
            ],
            [
                |r| r.broadcast(&mut [1.0], 0),
                |r| r.broadcast(&mut [1.0], 1),
            ],
        ];
        for calls in mismatches {
            let results = on_every_rank(2, move |rank| calls[rank.rank()](rank));
            for result in results {
                let message = result.unwrap_err().to_string();
                assert!(message.contains("out of step"), "{message}");
            }
        }
    }

    #[test]
    fn an_aborting_rank_stops_the_others_with_its_reason() {
        let results = on_every_rank(2, |rank| {
            if rank.rank() == 0 {
                rank.abort("interrupted");
                return Ok(());
            }
            rank.barrier()
        });
        let message = results[1].as_ref().unwrap_err().to_string();
        assert!(message.contains("rank 0 failed: interrupted"), "{message}");
    }

    #[test]
    fn a_broadcast_from_outside_the_group_is_refused() {
        let ranks = LocalGroup::new(1).unwrap();
        let err = ranks[0].broadcast(&mut [0.0], 1).unwrap_err();
        assert!(err.to_string().contains("rank 1 in a group of 1"), "{err}");
    }

    #[test]
    fn agree_gives_every_rank_the_first_failing_ranks_error() {
        let results = on_every_rank(3, |rank| {
            let own = match rank.rank() {
                0 => Ok(7),
                failing => Err(Error::InvalidArgument(format!("no data on {failing}"))),
            };
            super::super::agree(rank, own)
        });
        for result in results {
            assert_eq!(
                result.unwrap_err().to_string(),
                "rank 1: invalid argument: no data on 1"
            );
        }
        let results = on_every_rank(2, |rank| {
            let own = match rank.rank() {
                0 => Ok(()),
                _ => Err(Error::Interrupted("saved".to_string())),
            };
            super::super::agree(rank, own)
        });
        for result in results {
            let error = result.unwrap_err();
            assert!(
                matches!(&error, Error::Rank { rank: 1, source } if matches!(**source, Error::Interrupted(_))),
                "{error:?}"
            );
        }
        let results = on_every_rank(2, |rank| super::super::agree(rank, Ok(rank.rank())));
        assert_eq!(
            results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [0, 1]
        );
    }

    #[test]
    fn ranks_that_set_other_options_are_refused_alike() {
        let results = on_every_rank(2, |rank| {
            let mut settings = vec![("lr".to_string(), "0.001".to_string())];
            if rank.rank() == 1 {
                settings.push(("patience".to_string(), "3".to_string()));
            }
            super::super::check_same_settings(rank, &settings)
        });
        for result in results {
            let message = result.unwrap_err().to_string();
            assert!(
                message.starts_with("rank 1 sets other options than rank 0"),
                "{message}"
            );
        }
    }
}
