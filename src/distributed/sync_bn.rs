//! Synchronized BatchNorm: the statistics of the global batch, from each rank's statistics of
//! its own slice, and the backward pass's per-channel sums over the global batch.
//!
//! Forward: each rank reduces its slice into the usual `stat` planes (count n_r, shift K_r,
//! shifted mean μ_r = mean_r − K_r, biased variance v_r). The ranks all-gather them and every
//! rank merges them the same way, in f64, by Chan's formula about rank 0's shift K:
//!
//! ```text
//! d_r = (K_r − K) + μ_r          (each rank's mean about K)
//! N = Σ n_r,  μ = Σ n_r·d_r / N,  M2 = Σ n_r·v_r + Σ n_r·(d_r − μ)²,  var = M2 / N
//! ```
//!
//! so the merged statistics keep the shift (x − K stays at the scale of the spread) and are
//! exact for slices of any sizes. The running statistics are then updated from the global
//! mean and variance (unbiased over N, where the model asks for it), the same on every rank.
//!
//! Backward: dβ = Σdy and dγ = Σdy·x̂ over the global batch are the sums of the ranks' own,
//! all-reduced; dx = γ·invstd/N·(N·dy − dβ − x̂·dγ) then uses them with the global N. The
//! parameters' own gradients dγ and dβ stay each rank's part: they are summed once, with every
//! other gradient, when the step's gradients are reduced.

use super::Collective;
use crate::ops::batchnorm::cpu::update_channel;
use crate::ops::batchnorm::{BatchNormConfig, stat};
use crate::ops::check_len;
use crate::{Error, Result};

/// The `stat` planes of the union of every rank's batch, from this rank's planes (`local`, for
/// `channels` channels) and its count of values per channel; returns them and the global count.
pub fn merge_statistics(
    group: &dyn Collective,
    local: &[f32],
    count: u64,
    channels: usize,
    eps: f32,
) -> Result<(Vec<f32>, u64)> {
    check_planes(local.len(), channels)?;
    let gathered = group.all_gather(local)?;
    let counts = group.all_gather_u64(&[count])?;
    merge_planes(&gathered, &counts, channels, eps)
}

/// `merge_statistics` on the gathered planes (one block of `stat::PLANES`·C per rank, in rank
/// order) and each rank's count of values per channel.
pub fn merge_planes(
    gathered: &[f32],
    counts: &[u64],
    channels: usize,
    eps: f32,
) -> Result<(Vec<f32>, u64)> {
    check_planes(gathered.len(), channels * counts.len())?;
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return Err(Error::InvalidArgument(
            "synchronized BatchNorm got no values to merge".to_string(),
        ));
    }
    let n_total = total as f64;
    let blocks: Vec<&[f32]> = gathered.chunks_exact(stat::PLANES * channels).collect();
    let get = |rank: usize, plane: usize, c: usize| f64::from(blocks[rank][plane * channels + c]);
    let mut merged = vec![0.0f32; stat::PLANES * channels];
    for c in 0..channels {
        let shift = get(0, stat::SHIFT, c);
        let mean_about_shift =
            |rank: usize| (get(rank, stat::SHIFT, c) - shift) + get(rank, stat::SHIFTED_MEAN, c);
        let mean: f64 = (counts.iter().enumerate())
            .map(|(rank, &n)| n as f64 * mean_about_shift(rank))
            .sum::<f64>()
            / n_total;
        let m2: f64 = (counts.iter().enumerate())
            .map(|(rank, &n)| {
                let n = n as f64;
                let apart = mean_about_shift(rank) - mean;
                n * get(rank, stat::VAR, c) + n * apart * apart
            })
            .sum();
        let var = m2 / n_total;
        let planes = [
            (stat::MEAN, shift + mean),
            (stat::VAR, var),
            (stat::INVSTD, 1.0 / (var + f64::from(eps)).sqrt()),
            (stat::SHIFT, shift),
            (stat::SHIFTED_MEAN, mean),
        ];
        for (plane, value) in planes {
            merged[plane * channels + c] = value as f32;
        }
    }
    Ok((merged, total))
}

/// Refuses other than `stat::PLANES` values for each of `channels` channels (of every rank).
fn check_planes(len: usize, channels: usize) -> Result<()> {
    if channels > 0 && len == stat::PLANES * channels {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "synchronized BatchNorm got {len} statistics for {channels} channels, {} each",
        stat::PLANES
    )))
}

/// The running statistics' update from the global batch's `stats` planes over `count` values
/// per channel (at least 2), as one device's BatchNorm makes it from its batch.
pub fn update_running(
    stats: &[f32],
    count: u64,
    config: BatchNormConfig,
    running_mean: &mut [f32],
    running_var: &mut [f32],
) -> Result<()> {
    let channels = running_mean.len();
    check_planes(stats.len(), channels)?;
    check_len("running variance", running_var.len(), channels)?;
    if count < 2 {
        return Err(Error::InvalidArgument(format!(
            "BatchNorm in training mode needs more than 1 value per channel over the group's \
             batch, got {count}"
        )));
    }
    let factor = config.running_var_factor(count as usize);
    let batch = |plane: usize, c: usize| stats[plane * channels + c];
    for (c, running) in running_mean
        .iter_mut()
        .zip(running_var.iter_mut())
        .enumerate()
    {
        let batch_stats = (batch(stat::MEAN, c), batch(stat::VAR, c));
        update_channel(config, factor, batch_stats, running);
    }
    Ok(())
}

/// Every rank's dβ and dγ (one value per channel each), summed over the ranks: the global
/// batch's, for its dx.
pub fn sum_gradients(
    group: &dyn Collective,
    dbeta: &[f32],
    dgamma: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_len("dgamma", dgamma.len(), dbeta.len())?;
    let mut sums = [dbeta, dgamma].concat();
    group.all_reduce_sum(&mut sums)?;
    let dgamma = sums.split_off(dbeta.len());
    Ok((sums, dgamma))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batchnorm::BatchNormShape;
    use crate::ops::batchnorm::cpu::batch_stats;

    /// Statistics of `values` (one channel) as one device computes them.
    fn planes(values: &[f32]) -> Vec<f32> {
        let mut stats = vec![0.0; stat::PLANES];
        batch_stats(
            values,
            BatchNormShape::new(values.len(), 1, 1),
            1e-5,
            &mut stats,
        );
        stats
    }

    #[test]
    fn merged_slices_of_uneven_sizes_give_the_float64_statistics_of_the_whole() {
        // Around 1e4, where forming x − mean from an f32 mean would lose the spread.
        let values: Vec<f32> = (0..23)
            .map(|i| 1e4 + ((i * 7919) % 23) as f32 * 0.01)
            .collect();
        let slices = [&values[..4], &values[4..15], &values[15..]];
        let gathered: Vec<f32> = slices.iter().flat_map(|s| planes(s)).collect();
        let counts: Vec<u64> = slices.iter().map(|s| s.len() as u64).collect();
        let (merged, total) = merge_planes(&gathered, &counts, 1, 1e-5).unwrap();
        assert_eq!(total, 23);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let close = |got: f32, want: f64, tol: f64| {
            assert!(
                (f64::from(got) - want).abs() <= tol * want.abs().max(1e-30),
                "{got} vs {want}"
            );
        };
        close(merged[stat::MEAN], mean, 1e-7);
        close(merged[stat::VAR], var, 1e-5);
        // The shift is a sample, and the shifted mean carries the rest of the mean.
        assert!(values.contains(&merged[stat::SHIFT]));
        close(
            merged[stat::SHIFTED_MEAN],
            mean - f64::from(merged[stat::SHIFT]),
            1e-5,
        );
        close(merged[stat::INVSTD], 1.0 / (var + 1e-5).sqrt(), 1e-5);
    }

    #[test]
    fn one_rank_keeps_its_own_statistics() {
        let values = [1.0, 2.0, 4.0, 8.0];
        let own = planes(&values);
        let (merged, total) = merge_planes(&own, &[4], 1, 1e-5).unwrap();
        assert_eq!(total, 4);
        for (got, want) in merged.iter().zip(&own) {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{merged:?} vs {own:?}"
            );
        }
    }

    #[test]
    fn running_statistics_take_the_unbiased_variance_over_the_count_given() {
        let config = BatchNormConfig::default();
        let mut stats = vec![0.0; stat::PLANES];
        stats[stat::MEAN] = 2.0;
        stats[stat::VAR] = 3.0;
        let (mut mean, mut var) = ([0.0], [1.0]);
        update_running(&stats, 4, config, &mut mean, &mut var).unwrap();
        let momentum = config.momentum();
        assert!((mean[0] - momentum * 2.0).abs() < 1e-7);
        let unbiased = 3.0 * 4.0 / 3.0;
        assert!((var[0] - ((1.0 - momentum) + momentum * unbiased)).abs() < 1e-6);
    }

    #[test]
    fn malformed_statistics_are_refused_not_indexed() {
        let planes = vec![0.0; stat::PLANES];
        assert!(
            merge_planes(&planes, &[1, 1], 1, 1e-5).is_err(),
            "two counts, one block"
        );
        assert!(merge_planes(&planes, &[0], 1, 1e-5).is_err(), "no values");
        assert!(merge_planes(&[], &[], 0, 1e-5).is_err(), "no channels");
        let config = BatchNormConfig::default();
        let (mut mean, mut var) = ([0.0; 2], [1.0; 1]);
        assert!(update_running(&planes, 4, config, &mut mean, &mut var).is_err());
        let (mut mean, mut var) = ([0.0], [1.0]);
        assert!(
            update_running(&planes, 1, config, &mut mean, &mut var).is_err(),
            "count 1"
        );
    }
}
