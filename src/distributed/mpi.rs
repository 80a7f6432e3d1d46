//! Ranks in separate processes, on one machine or many, started by `mpirun`: the collectives
//! are MPI's own (the `mpi` crate over OpenMPI or MPICH).

use std::cell::RefCell;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::{Collective, check_root};
use crate::{Error, Result};

/// One process's rank in an MPI communicator.
///
/// A reduction sums in the order its MPI library's algorithm chooses, not necessarily in rank
/// order. The MPI standard only advises that every rank get the same bits; OpenMPI's do, and the
/// trainer's check that the replicas stay identical (`check_replicas_agree`) would stop a run
/// on a library whose reductions did not. A failing MPI call ends the process (MPI's
/// default error handler), and `abort` ends every process of the job.
pub struct MpiRank {
    /// A duplicate of the communicator given, so that wgnorm's collectives never match an
    /// embedder's own messages. Dropped (freed) before the universe is finalized.
    comm: SimpleCommunicator,
    /// Where this rank started MPI itself: finalized when the rank is dropped.
    _universe: Option<Universe>,
    /// A copy of the values an all-reduce sends, kept between calls: megabytes of fresh pages
    /// at every call cost more than the exchange (`wgnorm bench --suite distributed`).
    send: RefCell<Vec<f32>>,
}

impl MpiRank {
    /// Starts MPI in this process and joins its world: every process `mpirun` started.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            Error::Distributed(
                "MPI is already running in this process; pass its communicator to \
                 MpiRank::with_communicator"
                    .to_string(),
            )
        })?;
        Ok(Self {
            comm: universe.world().duplicate(),
            _universe: Some(universe),
            send: RefCell::default(),
        })
    }

    /// A rank of `comm`, a communicator of an embedder that runs MPI itself; wgnorm talks over
    /// a duplicate of it.
    pub fn with_communicator(comm: &SimpleCommunicator) -> Self {
        Self {
            comm: comm.duplicate(),
            _universe: None,
            send: RefCell::default(),
        }
    }
}

impl Collective for MpiRank {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn world(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        let mut own = self.send.borrow_mut();
        own.clear();
        own.extend_from_slice(values);
        self.comm
            .all_reduce_into(&own[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()> {
        let own = values.to_vec();
        self.comm
            .all_reduce_into(&own[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>> {
        let mut gathered = vec![0.0; values.len() * self.world()];
        self.comm.all_gather_into(values, &mut gathered[..]);
        Ok(gathered)
    }

    fn all_gather_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
        let mut gathered = vec![0; values.len() * self.world()];
        self.comm.all_gather_into(values, &mut gathered[..]);
        Ok(gathered)
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world())?;
        self.comm
            .process_at_rank(root as i32)
            .broadcast_into(values);
        Ok(())
    }

    fn broadcast_u64(&self, values: &mut [u64], root: usize) -> Result<()> {
        check_root(root, self.world())?;
        self.comm
            .process_at_rank(root as i32)
            .broadcast_into(values);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.comm.barrier();
        Ok(())
    }

    /// Prints `why` and ends every process of the job (MPI_Abort): MPI has no way to make the
    /// other ranks' next collective fail instead, and they would wait for this one forever.
    fn abort(&self, why: &str) {
        // One write, so that it does not interleave with the other ranks' lines.
        let line = format!("error: rank {} failed: {why}\n", self.rank());
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        self.comm.abort(2)
    }
}
