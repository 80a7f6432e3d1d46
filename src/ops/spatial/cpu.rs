//! The CPU twin of `shaders/spatial.wgsl`. The GPU gathers into each output; here the
//! backward passes scatter from each gradient, walking the windows in the same row-major order,
//! so every sum adds the same terms in the same order and the two backends agree exactly.
//! Images are channels-last, so each window tap is a contiguous run of channels: the loops work
//! on those runs, which the compiler vectorizes.

use super::{ImageShape, SpatialOps, Window};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};

/// The input row (or column) a window position reads: `out·stride + offset − padding`, or
/// `None` in the padding.
fn source(out: usize, offset: usize, window: Window, extent: usize) -> Option<usize> {
    (out * window.stride + offset)
        .checked_sub(window.padding)
        .filter(|&i| i < extent)
}

/// Calls `visit(output position, taps)` for every window in output order (n, oy, ox), where
/// `taps[ky·k + kx]` is the index of the tap's first channel in the input, or `None` in the
/// padding.
fn for_each_window(
    shape: ImageShape,
    window: Window,
    mut visit: impl FnMut(usize, &[Option<usize>]),
) {
    // The op has checked that the window fits.
    let (out_h, out_w) = window.output(shape.height, shape.width).unwrap_or((0, 0));
    let k = window.kernel;
    let mut taps = vec![None; k * k];
    let mut position = 0;
    for n in 0..shape.images {
        for oy in 0..out_h {
            for ox in 0..out_w {
                for ky in 0..k {
                    let iy = source(oy, ky, window, shape.height);
                    for kx in 0..k {
                        let ix = source(ox, kx, window, shape.width);
                        taps[ky * k + kx] = iy.zip(ix).map(|(iy, ix)| {
                            ((n * shape.height + iy) * shape.width + ix) * shape.channels
                        });
                    }
                }
                visit(position, &taps);
                position += 1;
            }
        }
    }
}

/// Each channel's maximum over a pooling window's taps (which lie inside the image: pooling
/// takes no padding, the op checks it), compared in row-major order as PyTorch does: a later
/// value replaces the maximum only if it is greater, so a NaN in the first tap stays. With
/// `argmax`, also the tap each maximum came from.
fn window_maxima(
    x: &[f32],
    taps: &[Option<usize>],
    maxima: &mut [f32],
    mut argmax: Option<&mut [f32]>,
) {
    let channels = maxima.len();
    let first = taps[0].unwrap_or(0);
    maxima.copy_from_slice(&x[first..first + channels]);
    if let Some(at) = argmax.as_deref_mut() {
        at.fill(0.0);
    }
    for (tap, &start) in taps.iter().enumerate().skip(1) {
        let values = &x[start.unwrap_or(0)..][..channels];
        // Two loops, not a test per value: inference keeps the plain vectorized maximum.
        match argmax.as_deref_mut() {
            None => {
                for (max, &value) in maxima.iter_mut().zip(values) {
                    *max = if value > *max { value } else { *max };
                }
            }
            Some(at) => {
                for ((max, &value), at) in maxima.iter_mut().zip(values).zip(at) {
                    let greater = value > *max;
                    *max = if greater { value } else { *max };
                    *at = if greater { tap as f32 } else { *at };
                }
            }
        }
    }
}

impl SpatialOps for CpuBackend {
    fn im2col_unchecked(
        &self,
        x: &CpuBuffer,
        shape: ImageShape,
        window: Window,
        cols: &mut CpuBuffer,
    ) -> Result<()> {
        let (channels, taps) = (shape.channels, window.kernel * window.kernel);
        let padding = vec![0.0; channels];
        for_each_window(shape, window, |position, sources| {
            let row = &mut cols[position * channels * taps..][..channels * taps];
            for (tap, source) in sources.iter().enumerate() {
                let run = source.map_or(&padding[..], |start| &x[start..start + channels]);
                for (value, &x) in row[tap..].iter_mut().step_by(taps).zip(run) {
                    *value = x;
                }
            }
        });
        Ok(())
    }

    fn col2im_unchecked(
        &self,
        dcols: &CpuBuffer,
        shape: ImageShape,
        window: Window,
        dx: &mut CpuBuffer,
    ) -> Result<()> {
        let (channels, taps) = (shape.channels, window.kernel * window.kernel);
        dx.fill(0.0);
        for_each_window(shape, window, |position, sources| {
            let row = &dcols[position * channels * taps..][..channels * taps];
            for (tap, source) in sources.iter().enumerate() {
                if let Some(start) = *source {
                    let dx = &mut dx[start..start + channels];
                    for (dx, &dcol) in dx.iter_mut().zip(row[tap..].iter().step_by(taps)) {
                        *dx += dcol;
                    }
                }
            }
        });
        Ok(())
    }

    fn max_pool_forward_unchecked(
        &self,
        x: &CpuBuffer,
        shape: ImageShape,
        window: Window,
        y: &mut CpuBuffer,
        taps: Option<&mut CpuBuffer>,
    ) -> Result<()> {
        let channels = shape.channels;
        let mut saved = taps;
        for_each_window(shape, window, |position, taps| {
            let at = position * channels..(position + 1) * channels;
            let argmax = saved.as_deref_mut().map(|saved| &mut saved[at.clone()]);
            window_maxima(x, taps, &mut y[at], argmax);
        });
        Ok(())
    }

    fn max_pool_backward_unchecked(
        &self,
        saved: &CpuBuffer,
        dy: &CpuBuffer,
        shape: ImageShape,
        window: Window,
        dx: &mut CpuBuffer,
    ) -> Result<()> {
        dx.fill(0.0);
        let channels = shape.channels;
        for_each_window(shape, window, |position, taps| {
            let at = &saved[position * channels..][..channels];
            let dy = &dy[position * channels..][..channels];
            for (c, (&tap, &dy)) in at.iter().zip(dy).enumerate() {
                // The forward saved taps inside the image: pooling takes no padding.
                if let Some(start) = taps[tap as usize] {
                    dx[start + c] += dy;
                }
            }
        });
        Ok(())
    }

    fn avg_pool_forward_unchecked(
        &self,
        x: &CpuBuffer,
        shape: ImageShape,
        y: &mut CpuBuffer,
    ) -> Result<()> {
        let (positions, channels) = (shape.positions(), shape.channels);
        for n in 0..shape.images {
            for c in 0..channels {
                let sum: f32 = (0..positions)
                    .map(|s| x[(n * positions + s) * channels + c])
                    .sum();
                y[n * channels + c] = sum / positions as f32;
            }
        }
        Ok(())
    }

    fn avg_pool_backward_unchecked(
        &self,
        dy: &CpuBuffer,
        shape: ImageShape,
        dx: &mut CpuBuffer,
    ) -> Result<()> {
        let channels = shape.channels;
        let positions = shape.positions() as f32;
        for (i, dx) in dx.iter_mut().enumerate() {
            let (n, c) = (i / (shape.positions() * channels), i % channels);
            *dx = dy[n * channels + c] / positions;
        }
        Ok(())
    }

    fn transpose_unchecked(
        &self,
        x: &CpuBuffer,
        batches: usize,
        rows: usize,
        cols: usize,
        y: &mut CpuBuffer,
    ) -> Result<()> {
        let matrix = rows * cols;
        for b in 0..batches {
            for i in 0..rows {
                for j in 0..cols {
                    y[b * matrix + j * rows + i] = x[b * matrix + i * cols + j];
                }
            }
        }
        Ok(())
    }
}
