//! The CPU twin of `shaders/spatial.wgsl`. The GPU gathers into each output; here the
//! backward passes scatter from each gradient, walking the windows in the same row-major order,
//! so every sum adds the same terms in the same order and the two backends agree exactly.

use super::{ImageShape, SpatialOps, Window};
use crate::Result;
use crate::cpu::CpuBackend;

/// The input row (or column) a window position reads: `out·stride + offset − padding`, or
/// `None` in the padding.
fn source(out: usize, offset: usize, window: Window, extent: usize) -> Option<usize> {
    (out * window.stride + offset)
        .checked_sub(window.padding)
        .filter(|&i| i < extent)
}

/// The output's height and width (the op has checked that the window fits).
fn output_size(shape: ImageShape, window: Window) -> (usize, usize) {
    window.output(shape.height, shape.width).unwrap_or((0, 0))
}

/// Calls `visit(output index, input index or None)` for every value of every patch, in
/// `im2col`'s output order: rows (n, oy, ox), then columns (c, ky, kx).
fn for_each_patch_value(
    shape: ImageShape,
    window: Window,
    mut visit: impl FnMut(usize, Option<usize>),
) {
    let (out_h, out_w) = output_size(shape, window);
    let k = window.kernel;
    let mut out = 0;
    for n in 0..shape.images {
        for oy in 0..out_h {
            for ox in 0..out_w {
                for c in 0..shape.channels {
                    for ky in 0..k {
                        let iy = source(oy, ky, window, shape.height);
                        for kx in 0..k {
                            let ix = source(ox, kx, window, shape.width);
                            let input = iy.zip(ix).map(|(iy, ix)| {
                                ((n * shape.height + iy) * shape.width + ix) * shape.channels + c
                            });
                            visit(out, input);
                            out += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Calls `visit(output index, input index of the window's first maximum)` for every pooled
/// value, in output order.
fn for_each_window_max(
    x: &[f32],
    shape: ImageShape,
    window: Window,
    mut visit: impl FnMut(usize, usize),
) {
    let (out_h, out_w) = output_size(shape, window);
    let mut out = 0;
    for n in 0..shape.images {
        for oy in 0..out_h {
            for ox in 0..out_w {
                for c in 0..shape.channels {
                    let at = |ky: usize, kx: usize| {
                        let (iy, ix) = (oy * window.stride + ky, ox * window.stride + kx);
                        ((n * shape.height + iy) * shape.width + ix) * shape.channels + c
                    };
                    let mut best = at(0, 0);
                    for ky in 0..window.kernel {
                        for kx in 0..window.kernel {
                            if x[at(ky, kx)] > x[best] {
                                best = at(ky, kx);
                            }
                        }
                    }
                    visit(out, best);
                    out += 1;
                }
            }
        }
    }
}

impl SpatialOps for CpuBackend {
    fn im2col_unchecked(
        &self,
        x: &Vec<f32>,
        shape: ImageShape,
        window: Window,
        cols: &mut Vec<f32>,
    ) -> Result<()> {
        for_each_patch_value(shape, window, |out, input| {
            cols[out] = input.map_or(0.0, |i| x[i]);
        });
        Ok(())
    }

    fn col2im_unchecked(
        &self,
        dcols: &Vec<f32>,
        shape: ImageShape,
        window: Window,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        dx.fill(0.0);
        for_each_patch_value(shape, window, |out, input| {
            if let Some(i) = input {
                dx[i] += dcols[out];
            }
        });
        Ok(())
    }

    fn max_pool_forward_unchecked(
        &self,
        x: &Vec<f32>,
        shape: ImageShape,
        window: Window,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        for_each_window_max(x, shape, window, |out, best| y[out] = x[best]);
        Ok(())
    }

    fn max_pool_backward_unchecked(
        &self,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        shape: ImageShape,
        window: Window,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        dx.fill(0.0);
        for_each_window_max(x, shape, window, |out, best| dx[best] += dy[out]);
        Ok(())
    }

    fn avg_pool_forward_unchecked(
        &self,
        x: &Vec<f32>,
        shape: ImageShape,
        y: &mut Vec<f32>,
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
        dy: &Vec<f32>,
        shape: ImageShape,
        dx: &mut Vec<f32>,
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
        x: &Vec<f32>,
        batches: usize,
        rows: usize,
        cols: usize,
        y: &mut Vec<f32>,
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
