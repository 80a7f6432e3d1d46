//! The counter-based hash behind every random stream wgnorm derives from a run's seed: dropout
//! masks and the shuffling order. Pure functions of their inputs, so both backends, a resumed
//! run and an uninterrupted one draw the same values.

/// SplitMix64's finalizer: mixes a 64-bit value so that nearby inputs give unrelated outputs.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-bit seed for one purpose (a stream tag) and index, derived from the run's seed.
pub fn derive_seed(seed: u64, purpose: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed ^ purpose) ^ index)
}
