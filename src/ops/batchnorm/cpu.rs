//! CPU twin of `shaders/batchnorm.wgsl` (the formulas are written there once). Same steps:
//! reduce x − shift with per-block two-pass moments merged by Chan's formula, keep the shift
//! and the shifted mean apart, normalize in one elementwise pass.

use std::borrow::Cow;

use super::cpu_reduce::{
    Cascade, Moments, block_moments_2d, block_moments_runs, block_rows, lane_sum,
};
use super::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape,
    BatchSums, Mode, RunningStats, stat,
};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};
use crate::ops::activation::Activation;
use crate::ops::activation::cpu::{activate_in_place, relu_gradient_from_output};

impl BatchNormOps for CpuBackend {
    fn batchnorm_forward_unchecked(
        &self,
        mode: Mode,
        x: &CpuBuffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        activation: Option<Activation>,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        // A ghost batch is a run of consecutive samples: its rows of x, y and its block of
        // statistics are slices, so each is reduced and normalized in place.
        let ghost = match mode {
            Mode::Train => {
                for_each_ghost(shape, &mut out.stats, |rows, stats| {
                    batch_stats(&x[rows], shape.ghost(), config.eps(), stats)
                });
                update_running(
                    &out.stats,
                    shape,
                    config,
                    &mut running.mean,
                    &mut running.var,
                );
                shape.ghost()
            }
            Mode::Eval => {
                eval_stats(&running.mean, &running.var, config, &mut out.stats);
                shape.with_ghost_batches(1)
            }
        };
        let stats_len = ghost.stats_len();
        for (g, rows) in ghost_rows(shape, ghost).enumerate() {
            let stats = &out.stats[g * stats_len..(g + 1) * stats_len];
            let (x, y) = (&x[rows.clone()], &mut out.y[rows]);
            normalize(x, ghost, stats, |c| affine.gamma[c], |c| affine.beta[c], y);
        }
        if let Some(activation) = activation {
            activate_in_place(activation, &mut out.y);
        }
        Ok(())
    }

    fn batchnorm_backward_unchecked(
        &self,
        x: &CpuBuffer,
        activated: Option<(&CpuBuffer, Activation)>,
        dy: &CpuBuffer,
        shape: BatchNormShape,
        gamma: &CpuBuffer,
        stats: &CpuBuffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        backward(x, &gated(activated, dy), shape, gamma, stats, grads);
        Ok(())
    }

    fn batchnorm_partial_statistics_unchecked(
        &self,
        x: &CpuBuffer,
        shape: BatchNormShape,
        _affine: &Affine<Self>,
        _running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        batch_stats(x, shape, config.eps(), &mut out.stats);
        Ok(())
    }

    fn batchnorm_parameter_grads_unchecked(
        &self,
        x: &CpuBuffer,
        activated: Option<(&CpuBuffer, Activation)>,
        dy: &CpuBuffer,
        shape: BatchNormShape,
        _gamma: &CpuBuffer,
        stats: &CpuBuffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        let (dbeta, dgamma) = parameter_sums(x, &gated(activated, dy), shape, stats);
        grads.dbeta.copy_from_slice(&dbeta);
        grads.dgamma.copy_from_slice(&dgamma);
        Ok(())
    }

    fn batchnorm_apply_unchecked(
        &self,
        x: &CpuBuffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        stats: &CpuBuffer,
        activation: Option<Activation>,
        y: &mut CpuBuffer,
    ) -> Result<()> {
        normalize(x, shape, stats, |c| affine.gamma[c], |c| affine.beta[c], y);
        if let Some(activation) = activation {
            activate_in_place(activation, y);
        }
        Ok(())
    }

    fn batchnorm_backward_input_unchecked(
        &self,
        x: &CpuBuffer,
        activated: Option<(&CpuBuffer, Activation)>,
        dy: &CpuBuffer,
        shape: BatchNormShape,
        (gamma, stats): (&CpuBuffer, &CpuBuffer),
        sums: BatchSums<'_>,
        dx: &mut CpuBuffer,
    ) -> Result<()> {
        backward_dx(
            x,
            &gated(activated, dy),
            shape,
            |c| gamma[c],
            stats,
            sums,
            dx,
        );
        Ok(())
    }
}

/// dy behind the fused activation whose output is `activated` (where there is one): the
/// gradient reaching BatchNorm's own output.
fn gated<'a>(activated: Option<(&CpuBuffer, Activation)>, dy: &'a [f32]) -> Cow<'a, [f32]> {
    match activated {
        Some((activated, activation)) => {
            Cow::Owned(relu_gradient_from_output(activation, activated, dy))
        }
        None => Cow::Borrowed(dy),
    }
}

/// The values of x each ghost batch of `ghost`'s shape spans, in order (x whole where there is
/// one).
pub(crate) fn ghost_rows(
    shape: BatchNormShape,
    ghost: BatchNormShape,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let len = ghost.numel();
    (0..shape.numel() / len).map(move |g| g * len..(g + 1) * len)
}

/// Calls `f(values of x, statistics block)` for each ghost batch of a training-mode `shape`.
pub(crate) fn for_each_ghost(
    shape: BatchNormShape,
    stats: &mut [f32],
    mut f: impl FnMut(std::ops::Range<usize>, &mut [f32]),
) {
    let ghost = shape.ghost();
    let blocks = stats.chunks_exact_mut(ghost.stats_len());
    for (rows, block) in ghost_rows(shape, ghost).zip(blocks) {
        f(rows, block);
    }
}

/// dβ, dγ (summed over the ghost batches) and dx (per ghost batch, from its own statistics and
/// sums) of a training-mode forward whose statistics are in `stats`.
fn backward(
    x: &[f32],
    dy: &[f32],
    shape: BatchNormShape,
    gamma: &[f32],
    stats: &[f32],
    grads: &mut BatchNormGrads<CpuBackend>,
) {
    let ghost = shape.ghost();
    grads.dgamma.fill(0.0);
    grads.dbeta.fill(0.0);
    let blocks = stats.chunks_exact(ghost.stats_len());
    for (rows, stats) in ghost_rows(shape, ghost).zip(blocks) {
        let (x, dy, dx) = (&x[rows.clone()], &dy[rows.clone()], &mut grads.dx[rows]);
        let (dbeta, dgamma) = ghost_backward(x, dy, ghost, |c| gamma[c], stats, dx);
        for (total, ghost) in grads.dbeta.iter_mut().zip(dbeta) {
            *total += ghost;
        }
        for (total, ghost) in grads.dgamma.iter_mut().zip(dgamma) {
            *total += ghost;
        }
    }
}

/// Batch statistics of x into the `stat` planes of `stats`.
pub fn batch_stats(x: &[f32], shape: BatchNormShape, eps: f32, stats: &mut [f32]) {
    let c = shape.c;
    let shift: Vec<f32> = (0..c).map(|channel| x[channel * shape.s]).collect();
    let mut cascade = Cascade::new();
    let step = block_rows(shape);
    for first in (0..shape.n).step_by(step) {
        let rows = first..(first + step).min(shape.n);
        let block = if shape.s == 1 {
            block_moments_2d(x, c, rows, &shift)
        } else {
            block_moments_runs(x, shape, rows, &shift)
        };
        cascade.push(block, Moments::merge);
    }
    let total = cascade.total(vec![Moments::default(); c], Moments::merge);
    let m = shape.per_channel() as f32;
    for channel in 0..c {
        let var = total[channel].m2 / m;
        stats[stat::MEAN * c + channel] = shift[channel] + total[channel].mean;
        stats[stat::VAR * c + channel] = var;
        stats[stat::INVSTD * c + channel] = 1.0 / (var + eps).sqrt();
        stats[stat::SHIFT * c + channel] = shift[channel];
        stats[stat::SHIFTED_MEAN * c + channel] = total[channel].mean;
    }
}

/// The running-statistics update from the batch statistics in `stats`: with ghost batches, from
/// the mean of their statistics (Keras), in ghost-batch order.
pub fn update_running(
    stats: &[f32],
    shape: BatchNormShape,
    config: BatchNormConfig,
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    let c = shape.c;
    let factor = config.running_var_factor(shape.per_channel());
    let ghosts = shape.ghost_batches as f32;
    for channel in 0..c {
        let (mut mean, mut var) = (0.0, 0.0);
        for block in stats.chunks_exact(stat::PLANES * c) {
            mean += block[stat::MEAN * c + channel];
            var += block[stat::VAR * c + channel];
        }
        let running = (&mut running_mean[channel], &mut running_var[channel]);
        update_channel(config, factor, (mean / ghosts, var / ghosts), running);
    }
}

/// One channel's running-statistics update from a batch's mean and (biased) variance, the
/// variance scaled by `factor` (m/(m − 1) for an unbiased running variance). As on the GPU, a
/// channel whose batch statistics are not finite keeps its running ones.
pub(crate) fn update_channel(
    config: BatchNormConfig,
    factor: f32,
    (mean, var): (f32, f32),
    (running_mean, running_var): (&mut f32, &mut f32),
) {
    if !(mean.is_finite() && var.is_finite()) {
        return;
    }
    let keep = 1.0 - config.momentum();
    *running_mean = keep * *running_mean + config.momentum() * mean;
    *running_var = keep * *running_var + config.momentum() * var * factor;
}

/// The `stat` planes for eval mode, with the running mean as the shift.
pub fn eval_stats(
    running_mean: &[f32],
    running_var: &[f32],
    config: BatchNormConfig,
    stats: &mut [f32],
) {
    let c = running_mean.len();
    for channel in 0..c {
        stats[stat::MEAN * c + channel] = running_mean[channel];
        stats[stat::VAR * c + channel] = running_var[channel];
        stats[stat::INVSTD * c + channel] = 1.0 / (running_var[channel] + config.eps()).sqrt();
        stats[stat::SHIFT * c + channel] = running_mean[channel];
        stats[stat::SHIFTED_MEAN * c + channel] = 0.0;
    }
}

/// The per-channel values both elementwise passes read.
struct ChannelStats<'a> {
    stats: &'a [f32],
    c: usize,
}

impl ChannelStats<'_> {
    fn get(&self, plane: usize, channel: usize) -> f32 {
        self.stats[plane * self.c + channel]
    }

    fn plane(&self, plane: usize) -> &[f32] {
        &self.stats[plane * self.c..(plane + 1) * self.c]
    }

    /// x − mean without forming the mean in f32.
    fn centered(&self, value: f32, channel: usize) -> f32 {
        (value - self.get(stat::SHIFT, channel)) - self.get(stat::SHIFTED_MEAN, channel)
    }
}

/// y = γ·x̂ + β with the statistics in `stats`, γ and β of a channel given by `gamma` and
/// `beta` (1 and 0 for GroupNorm's view, which has none).
pub fn normalize(
    x: &[f32],
    shape: BatchNormShape,
    stats: &[f32],
    gamma: impl Fn(usize) -> f32,
    beta: impl Fn(usize) -> f32,
    y: &mut [f32],
) {
    let per = ChannelStats { stats, c: shape.c };
    let row_len = shape.c * shape.s;
    if shape.s == 1 {
        let (shift, shifted_mean) = (per.plane(stat::SHIFT), per.plane(stat::SHIFTED_MEAN));
        let invstd = per.plane(stat::INVSTD);
        for (x_row, y_row) in x.chunks_exact(row_len).zip(y.chunks_exact_mut(row_len)) {
            for c in 0..row_len {
                let centered = (x_row[c] - shift[c]) - shifted_mean[c];
                y_row[c] = gamma(c) * centered * invstd[c] + beta(c);
            }
        }
        return;
    }
    for (x_row, y_row) in x.chunks_exact(row_len).zip(y.chunks_exact_mut(row_len)) {
        for (channel, (x_run, y_run)) in x_row
            .chunks_exact(shape.s)
            .zip(y_row.chunks_exact_mut(shape.s))
            .enumerate()
        {
            let invstd = per.get(stat::INVSTD, channel);
            for (out, &value) in y_run.iter_mut().zip(x_run) {
                *out = gamma(channel) * per.centered(value, channel) * invstd + beta(channel);
            }
        }
    }
}

fn add_pairs(a: (f32, f32), b: (f32, f32)) -> (f32, f32) {
    (a.0 + b.0, a.1 + b.1)
}

/// dβ, dγ and dx of one ghost batch (or a whole batch) whose statistics are in `stats`, γ of a
/// channel given by `gamma` (1 for GroupNorm's view); dx is written, dβ and dγ returned.
pub(crate) fn ghost_backward(
    x: &[f32],
    dy: &[f32],
    shape: BatchNormShape,
    gamma: impl Fn(usize) -> f32,
    stats: &[f32],
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (dbeta, dgamma) = parameter_sums(x, dy, shape, stats);
    let sums = BatchSums {
        dbeta: &dbeta,
        dgamma: &dgamma,
        count: shape.per_channel() as u64,
    };
    backward_dx(x, dy, shape, gamma, stats, sums, dx);
    (dbeta, dgamma)
}

/// dβ = Σdy and dγ = Σdy·x̂ per channel of x, normalized by `stats`.
fn parameter_sums(
    x: &[f32],
    dy: &[f32],
    shape: BatchNormShape,
    stats: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let c = shape.c;
    let per = ChannelStats { stats, c };
    let row_len = c * shape.s;
    let mut cascade = Cascade::new();
    let mut block_dy = vec![0.0f32; c];
    let mut block_dy_xc = vec![0.0f32; c];
    let step = block_rows(shape);
    for first in (0..shape.n).step_by(step) {
        let last = (first + step).min(shape.n);
        block_dy.fill(0.0);
        block_dy_xc.fill(0.0);
        let x_rows = x[first * row_len..last * row_len].chunks_exact(row_len);
        let dy_rows = dy[first * row_len..last * row_len].chunks_exact(row_len);
        if shape.s == 1 {
            let (shift, shifted_mean) = (per.plane(stat::SHIFT), per.plane(stat::SHIFTED_MEAN));
            for (x_row, dy_row) in x_rows.zip(dy_rows) {
                let lanes = block_dy
                    .iter_mut()
                    .zip(block_dy_xc.iter_mut())
                    .zip(x_row.iter().zip(dy_row))
                    .zip(shift.iter().zip(shifted_mean));
                for (((sum_dy, sum_dy_xc), (&v, &d)), (&k, &mean)) in lanes {
                    *sum_dy += d;
                    *sum_dy_xc += d * ((v - k) - mean);
                }
            }
        } else {
            for (x_row, dy_row) in x_rows.zip(dy_rows) {
                for (channel, (x_run, dy_run)) in x_row
                    .chunks_exact(shape.s)
                    .zip(dy_row.chunks_exact(shape.s))
                    .enumerate()
                {
                    let (k, mean) = (
                        per.get(stat::SHIFT, channel),
                        per.get(stat::SHIFTED_MEAN, channel),
                    );
                    block_dy[channel] += lane_sum([dy_run], |[d]| d);
                    block_dy_xc[channel] +=
                        lane_sum([x_run, dy_run], |[v, d]| d * ((v - k) - mean));
                }
            }
        }
        cascade.push(
            block_dy
                .iter()
                .copied()
                .zip(block_dy_xc.iter().copied())
                .collect(),
            add_pairs,
        );
    }
    let sums = cascade.total(vec![(0.0, 0.0); c], add_pairs);
    sums.into_iter()
        .enumerate()
        .map(|(channel, (sum_dy, sum_dy_xc))| (sum_dy, sum_dy_xc * per.get(stat::INVSTD, channel)))
        .unzip()
}

/// dx from the per-channel sums of the batch x belongs to (x's own, or a larger batch's).
fn backward_dx(
    x: &[f32],
    dy: &[f32],
    shape: BatchNormShape,
    gamma: impl Fn(usize) -> f32,
    stats: &[f32],
    BatchSums {
        dbeta,
        dgamma,
        count,
    }: BatchSums<'_>,
    dx: &mut [f32],
) {
    let c = shape.c;
    let per = ChannelStats { stats, c };
    let row_len = c * shape.s;
    let inv_m = 1.0 / count as f32;
    if shape.s == 1 {
        let (shift, shifted_mean) = (per.plane(stat::SHIFT), per.plane(stat::SHIFTED_MEAN));
        let invstd = per.plane(stat::INVSTD);
        let scale: Vec<f32> = (0..c).map(|ch| gamma(ch) * invstd[ch]).collect();
        let mean_dy: Vec<f32> = dbeta.iter().map(|&d| d * inv_m).collect();
        let mean_dy_xhat: Vec<f32> = dgamma.iter().map(|&d| d * inv_m).collect();
        let rows = x
            .chunks_exact(c)
            .zip(dy.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c));
        for ((x_row, dy_row), dx_row) in rows {
            for ch in 0..c {
                let xhat = ((x_row[ch] - shift[ch]) - shifted_mean[ch]) * invstd[ch];
                dx_row[ch] = scale[ch] * (dy_row[ch] - mean_dy[ch] - xhat * mean_dy_xhat[ch]);
            }
        }
        return;
    }
    let rows = x
        .chunks_exact(row_len)
        .zip(dy.chunks_exact(row_len))
        .zip(dx.chunks_exact_mut(row_len));
    for ((x_row, dy_row), dx_row) in rows {
        for (channel, ((x_run, dy_run), dx_run)) in x_row
            .chunks_exact(shape.s)
            .zip(dy_row.chunks_exact(shape.s))
            .zip(dx_row.chunks_exact_mut(shape.s))
            .enumerate()
        {
            let invstd = per.get(stat::INVSTD, channel);
            let scale = gamma(channel) * invstd;
            let mean_dy = dbeta[channel] * inv_m;
            let mean_dy_xhat = dgamma[channel] * inv_m;
            for ((out, &value), &grad) in dx_run.iter_mut().zip(x_run).zip(dy_run) {
                let xhat = per.centered(value, channel) * invstd;
                *out = scale * (grad - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
}
