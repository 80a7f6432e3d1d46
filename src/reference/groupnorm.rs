//! GroupNorm in f64 on channels-last samples, x of shape (N, P, C) for N samples of P positions
//! (1 for flat features) and C channels: per sample and group of C/G neighbouring channels,
//! statistics over the group's channels at every position, m = P·C/G values. LayerNorm is one
//! group (statistics over all of a sample's values), InstanceNorm one channel per group. The
//! affine γ, β are per channel. There are no running statistics: evaluation computes the same
//! as training.

use super::{Real, f64_of};

/// x's layout: samples, channels, and channel groups (the positions follow from x's length).
#[derive(Clone, Copy, Debug)]
pub struct Groups {
    /// Samples, N.
    pub samples: usize,
    /// Channels per position, C.
    pub channels: usize,
    /// Groups of C/G neighbouring channels, G (it divides C).
    pub groups: usize,
}

impl Groups {
    /// The statistic (sample · G + group) that element i of x belongs to.
    fn statistic_of(&self, len: usize, i: usize) -> usize {
        let sample = i / (len / self.samples);
        let group = (i % self.channels) / (self.channels / self.groups);
        sample * self.groups + group
    }

    /// Values per statistic, m = P·C/G.
    fn per_statistic(&self, len: usize) -> usize {
        len / (self.samples * self.groups)
    }
}

/// What the forward produces, in f64.
pub struct Forward {
    /// Normalized output.
    pub y: Vec<f64>,
    /// Mean per (sample, group), sample-major.
    pub mean: Vec<f64>,
    /// Biased variance, laid out as `mean`.
    pub var: Vec<f64>,
    /// 1/sqrt(var + eps), laid out as `mean`.
    pub invstd: Vec<f64>,
}

/// Gradients, in f64.
pub struct Grads {
    /// dL/dx.
    pub dx: Vec<f64>,
    /// dL/dγ, per channel.
    pub dgamma: Vec<f64>,
    /// dL/dβ, per channel.
    pub dbeta: Vec<f64>,
}

/// Two-pass mean and biased variance per (sample, group).
pub fn moments(x: &[impl Real], groups: Groups) -> (Vec<f64>, Vec<f64>) {
    super::grouped_moments(x, groups.samples * groups.groups, |i| {
        groups.statistic_of(x.len(), i)
    })
}

/// y = γ·(x − mean)·invstd + β, the statistics per (sample, group).
pub fn forward(
    x: &[impl Real],
    groups: Groups,
    gamma: &[impl Real],
    beta: &[impl Real],
    eps: f64,
) -> Forward {
    let (mean, var) = moments(x, groups);
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (k, c) = (groups.statistic_of(x.len(), i), i % groups.channels);
            f64_of(gamma[c]) * (f64_of(v) - mean[k]) * invstd[k] + f64_of(beta[c])
        })
        .collect();
    Forward {
        y,
        mean,
        var,
        invstd,
    }
}

/// Gradients from the three-term formula per (sample, group) on dx̂ = dy·γ; dγ and dβ summed
/// per channel over samples and positions.
pub fn backward(
    x: &[impl Real],
    dy: &[impl Real],
    groups: Groups,
    gamma: &[impl Real],
    eps: f64,
) -> Grads {
    let Forward { mean, invstd, .. } = forward(x, groups, gamma, gamma, eps);
    let statistic = |i: usize| groups.statistic_of(x.len(), i);
    let xhat = |i: usize| (f64_of(x[i]) - mean[statistic(i)]) * invstd[statistic(i)];
    let dxhat = |i: usize| f64_of(dy[i]) * f64_of(gamma[i % groups.channels]);
    let mut sum_dxhat = vec![0.0; mean.len()];
    let mut sum_dxhat_xhat = vec![0.0; mean.len()];
    let mut dgamma = vec![0.0; groups.channels];
    let mut dbeta = vec![0.0; groups.channels];
    for (i, &g) in dy.iter().enumerate() {
        let (k, c) = (statistic(i), i % groups.channels);
        sum_dxhat[k] += dxhat(i);
        sum_dxhat_xhat[k] += dxhat(i) * xhat(i);
        dgamma[c] += f64_of(g) * xhat(i);
        dbeta[c] += f64_of(g);
    }
    let m = groups.per_statistic(x.len()) as f64;
    let dx = (0..x.len())
        .map(|i| {
            let k = statistic(i);
            invstd[k] / m * (m * dxhat(i) - sum_dxhat[k] - xhat(i) * sum_dxhat_xhat[k])
        })
        .collect();
    Grads { dx, dgamma, dbeta }
}
