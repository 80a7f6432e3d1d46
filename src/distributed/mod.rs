//! Data-parallel training: several ranks, each a model replica on its own device, that exchange
//! gradients and BatchNorm statistics through one small interface, [`Collective`].
//!
//! Two engines implement it: [`LocalGroup`], several devices driven by threads of one process,
//! and MPI (the `mpi` feature) across processes and machines. Everything above the interface
//! (splitting batches, synchronized BatchNorm, averaging gradients) is the same for both.
//!
//! Every collective is called by every rank of the group in the same order with slices of the
//! same length; a reduction's result is the same, bit for bit, on every rank, so the replicas
//! never drift apart.

use crate::{Error, Result};

mod local;
#[cfg(feature = "mpi")]
mod mpi;
mod replica;
mod split;
pub mod sync_bn;
mod timed;

pub use local::{LocalGroup, LocalRank};
#[cfg(feature = "mpi")]
pub use mpi::MpiRank;
pub use replica::{all_reduce_gradients, broadcast_running, broadcast_state, check_replicas_agree};
pub use split::{RankSlice, global_batches};
pub use timed::Timed;

/// What every rank of a data-parallel group can do with the others.
pub trait Collective {
    /// This rank's index, 0-based.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world(&self) -> usize;

    /// Every rank's `values`, summed element by element (in rank order), into `values` on every
    /// rank.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;

    /// `all_reduce_sum` for counters.
    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()>;

    /// Every rank's `values`, one after another in rank order (world × len values).
    fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>>;

    /// `all_gather` for counters.
    fn all_gather_u64(&self, values: &[u64]) -> Result<Vec<u64>>;

    /// `root`'s `values` into `values` on every rank.
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<()>;

    /// `broadcast` for counters.
    fn broadcast_u64(&self, values: &mut [u64], root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Stops the group because this rank cannot go on (`why`): every other rank's next
    /// collective fails, naming this rank, instead of waiting for it (under MPI, every process
    /// of the job ends).
    fn abort(&self, why: &str);
}

/// `outcome` on every rank, where every rank's is `Ok`; where any rank's is an error, the first
/// failing rank's error on every rank (`Error::Rank`, of the same kind, so that the exit code
/// is the same). A step every rank takes alone (loading data, opening a device, evaluating,
/// saving) thus fails on all ranks alike, instead of leaving the others waiting at their next
/// collective for the one that stopped.
pub fn agree<T>(group: &dyn Collective, outcome: Result<T>) -> Result<T> {
    let failed = group.all_gather_u64(&[u64::from(outcome.is_err())])?;
    let Some(first) = failed.iter().position(|&failed| failed == 1) else {
        return outcome;
    };
    let (kind, text) = match &outcome {
        Err(error) if group.rank() == first => kind_and_text(error),
        _ => (0, String::new()),
    };
    let mut header = [kind, text.len() as u64];
    group.broadcast_u64(&mut header, first)?;
    let mut bytes: Vec<u64> = text.bytes().map(u64::from).collect();
    bytes.resize(header[1] as usize, 0);
    group.broadcast_u64(&mut bytes, first)?;
    let bytes: Vec<u8> = bytes.iter().map(|&byte| byte as u8).collect();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let source = match header[0] {
        1 => Error::Interrupted(text),
        2 => Error::DeviceLost(text),
        3 => Error::Diverged(text),
        4 => Error::Gpu(text),
        _ => Error::Distributed(text),
    };
    Err(Error::Rank {
        rank: first,
        source: Box::new(source),
    })
}

/// An error as `agree` sends it: the kinds whose exit codes differ, by number, with their own
/// text; any other as its whole message.
fn kind_and_text(error: &Error) -> (u64, String) {
    match error {
        Error::Interrupted(text) => (1, text.clone()),
        Error::DeviceLost(text) => (2, text.clone()),
        Error::Diverged(text) => (3, text.clone()),
        Error::Gpu(text) => (4, text.clone()),
        other => (0, other.to_string()),
    }
}

/// Whether `error` stopped this rank alone, so that it must stop the others (`abort`): not a
/// divergence (every rank sees the same loss totals), an error every rank agreed on, or a
/// group that is already broken.
pub fn stopped_alone(error: &Error) -> bool {
    !matches!(
        error,
        Error::Diverged(_) | Error::Distributed(_) | Error::Rank { .. }
    )
}

/// The sum of the rank-ordered rows of `gathered` (world rows of `len` values) into `out`, in
/// f32, rank 0 first: the order every engine sums in.
pub(crate) fn sum_in_rank_order(gathered: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for row in gathered.chunks_exact(out.len().max(1)) {
        for (sum, value) in out.iter_mut().zip(row) {
            *sum += value;
        }
    }
}

/// Refuses a root outside the group.
pub(crate) fn check_root(root: usize, world: usize) -> Result<()> {
    if root < world {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "broadcast from rank {root} in a group of {world} ranks"
    )))
}

/// A FNV-1a hash of `text`: ranks compare a hash of their settings before the first step.
pub fn settings_hash(text: &str) -> u64 {
    fnv1a(text.bytes())
}

/// The 64-bit FNV-1a hash of `bytes`.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Refuses to start when the ranks' settings differ, naming the first setting that does.
/// `settings` are (name, value) pairs; every rank gets the same error. Ranks whose lists name
/// other settings (one sets an option the others leave at its default) are refused as a whole,
/// since their lists cannot be compared one by one.
pub fn check_same_settings(group: &dyn Collective, settings: &[(String, String)]) -> Result<()> {
    let hashes: Vec<u64> = settings
        .iter()
        .map(|(name, value)| settings_hash(&format!("{name}={value}")))
        .collect();
    let names = fnv1a(
        settings
            .iter()
            .flat_map(|(name, _)| name.bytes().chain([0])),
    );
    let all = fnv1a(hashes.iter().flat_map(|hash| hash.to_le_bytes()));
    let summaries = group.all_gather_u64(&[names, all])?;
    let ranks: Vec<&[u64]> = summaries.chunks_exact(2).collect();
    let differing = |field: usize| ranks.iter().position(|rank| rank[field] != ranks[0][field]);
    if differing(1).is_none() {
        return Ok(());
    }
    if let Some(other) = differing(0) {
        return Err(Error::Distributed(format!(
            "rank {other} sets other options than rank 0; every rank must train with the same \
             settings"
        )));
    }
    // The same names in the same order on every rank: compared one by one.
    let gathered = group.all_gather_u64(&hashes)?;
    let per_rank = hashes.len();
    for (index, (name, _)) in settings.iter().enumerate() {
        let ranks: Vec<u64> = gathered
            .iter()
            .skip(index)
            .step_by(per_rank)
            .copied()
            .collect();
        if let Some(other) = ranks.iter().position(|&hash| hash != ranks[0]) {
            return Err(Error::Distributed(format!(
                "rank {other} runs with another {name} than rank 0; every rank must train with \
                 the same settings"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_order_sum_adds_every_row() {
        let mut out = [9.0; 2];
        sum_in_rank_order(&[1.0, 2.0, 10.0, 20.0, 100.0, 200.0], &mut out);
        assert_eq!(out, [111.0, 222.0]);
    }

    #[test]
    fn settings_hash_tells_values_apart() {
        assert_ne!(settings_hash("lr=0.001"), settings_hash("lr=0.01"));
        assert_eq!(settings_hash("lr=0.001"), settings_hash("lr=0.001"));
    }
}
