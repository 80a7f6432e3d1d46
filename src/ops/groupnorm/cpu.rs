//! CPU twin of GroupNorm: BatchNorm's per-ghost-batch functions on the view of x with one
//! ghost batch per sample, with a unit scale; and of `shaders/channel_affine.wgsl`, the same
//! sums, split by split in the same order.

use super::{GroupNormOps, GroupNormShape, affine_splits};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};
use crate::ops::batchnorm::cpu::{
    batch_stats, for_each_ghost, ghost_backward, ghost_rows, normalize,
};
use crate::ops::batchnorm::stat;

impl GroupNormOps for CpuBackend {
    fn groupnorm_normalize_unchecked(
        &self,
        x: &CpuBuffer,
        shape: GroupNormShape,
        eps: f32,
        xhat: &mut CpuBuffer,
        stats: &mut CpuBuffer,
    ) -> Result<()> {
        let view = shape.batchnorm_view();
        let sample = view.ghost();
        for_each_ghost(view, stats, |rows, block| {
            let x = &x[rows.clone()];
            batch_stats(x, sample, eps, block);
            normalize(x, sample, block, |_| 1.0, |_| 0.0, &mut xhat[rows]);
        });
        Ok(())
    }

    fn groupnorm_normalize_backward_unchecked(
        &self,
        x: &CpuBuffer,
        dxhat: &CpuBuffer,
        shape: GroupNormShape,
        stats: &CpuBuffer,
        dx: &mut CpuBuffer,
    ) -> Result<()> {
        let view = shape.batchnorm_view();
        let sample = view.ghost();
        let blocks = stats.chunks_exact(sample.stats_len());
        for (rows, block) in ghost_rows(view, sample).zip(blocks) {
            let (x, dxhat) = (&x[rows.clone()], &dxhat[rows.clone()]);
            // Its dβ and dγ, the view's own, go unused: GroupNorm's are per channel
            // (`channel_affine_grads`).
            ghost_backward(x, dxhat, sample, |_| 1.0, block, &mut dx[rows]);
        }
        Ok(())
    }

    fn channel_affine_unchecked(
        &self,
        x: &CpuBuffer,
        channels: usize,
        gamma: &CpuBuffer,
        beta: Option<&CpuBuffer>,
        out: &mut CpuBuffer,
    ) -> Result<()> {
        for (x_row, out_row) in x.chunks_exact(channels).zip(out.chunks_exact_mut(channels)) {
            for c in 0..channels {
                out_row[c] = gamma[c] * x_row[c] + beta.map_or(0.0, |beta| beta[c]);
            }
        }
        Ok(())
    }

    fn channel_affine_grads_unchecked(
        &self,
        x: &CpuBuffer,
        dy: &CpuBuffer,
        shape: GroupNormShape,
        stats: &CpuBuffer,
        [dgamma, dbeta]: [&mut CpuBuffer; 2],
    ) -> Result<()> {
        let (c, g) = (shape.channels, shape.groups);
        let rows = shape.samples * shape.positions;
        let (split_rows, _) = affine_splits(rows, c);
        // Each channel's group, to find its statistics in the sample's block.
        let group_of: Vec<usize> = (0..c).map(|channel| channel / (c / g)).collect();
        dgamma.fill(0.0);
        dbeta.fill(0.0);
        let (mut sum_dy, mut sum_dy_xhat) = (vec![0.0f32; c], vec![0.0f32; c]);
        for first in (0..rows).step_by(split_rows) {
            sum_dy.fill(0.0);
            sum_dy_xhat.fill(0.0);
            for row in first..(first + split_rows).min(rows) {
                let block = &stats[(row / shape.positions) * stat::PLANES * g..];
                let plane = |p: usize| &block[p * g..(p + 1) * g];
                let (shift, mean) = (plane(stat::SHIFT), plane(stat::SHIFTED_MEAN));
                let invstd = plane(stat::INVSTD);
                let values = row * c..(row + 1) * c;
                let (x_row, dy_row) = (&x[values.clone()], &dy[values]);
                for (channel, &group) in group_of.iter().enumerate() {
                    // x̂ as the normalization formed it.
                    let centered = (x_row[channel] - shift[group]) - mean[group];
                    let xhat = centered * invstd[group];
                    sum_dy[channel] += dy_row[channel];
                    sum_dy_xhat[channel] += dy_row[channel] * xhat;
                }
            }
            for channel in 0..c {
                dbeta[channel] += sum_dy[channel];
                dgamma[channel] += sum_dy_xhat[channel];
            }
        }
        Ok(())
    }
}
