//! Convolution and pooling in f64, written as the textbook sums over each output (no im2col):
//! images channels-last as `ImageShape` describes, weights as PyTorch's `Conv2d` stores them,
//! [out, in, k, k].

use super::{Real, f64_of};
use crate::ops::spatial::{ImageShape, Window};

/// The input value under tap (ky, kx) of output (oy, ox), or `None` in the padding.
fn tap(
    shape: ImageShape,
    window: Window,
    n: usize,
    (oy, ox): (usize, usize),
    (ky, kx): (usize, usize),
    c: usize,
) -> Option<usize> {
    let iy = (oy * window.stride + ky).checked_sub(window.padding)?;
    let ix = (ox * window.stride + kx).checked_sub(window.padding)?;
    (iy < shape.height && ix < shape.width)
        .then(|| ((n * shape.height + iy) * shape.width + ix) * shape.channels + c)
}

/// Every (n, (oy, ox)) output position of `window` over `shape`, in order.
fn positions(shape: ImageShape, window: Window) -> Vec<(usize, (usize, usize))> {
    let (out_h, out_w) = window.output(shape.height, shape.width).unwrap_or((0, 0));
    (0..shape.images)
        .flat_map(|n| (0..out_h).flat_map(move |oy| (0..out_w).map(move |ox| (n, (oy, ox)))))
        .collect()
}

/// Every (ky, kx) of a window.
fn taps(window: Window) -> impl Iterator<Item = (usize, usize)> {
    let k = window.kernel;
    (0..k).flat_map(move |ky| (0..k).map(move |kx| (ky, kx)))
}

/// `y[n, oy, ox, o] = b[o] + Σ_{c, ky, kx} w[o, c, ky, kx]·x[n, oy·s + ky − p, ox·s + kx − p, c]`.
pub fn conv2d(
    x: &[impl Real],
    shape: ImageShape,
    weight: &[impl Real],
    bias: &[impl Real],
    window: Window,
) -> Vec<f64> {
    let (outputs, k) = (bias.len(), window.kernel);
    let mut y = Vec::new();
    for (n, out) in positions(shape, window) {
        for o in 0..outputs {
            let mut sum = f64_of(bias[o]);
            for c in 0..shape.channels {
                for (ky, kx) in taps(window) {
                    if let Some(i) = tap(shape, window, n, out, (ky, kx), c) {
                        sum += f64_of(weight[((o * shape.channels + c) * k + ky) * k + kx])
                            * f64_of(x[i]);
                    }
                }
            }
            y.push(sum);
        }
    }
    y
}

/// (dx, dw, db) of `conv2d` for the gradient dy of its output.
pub fn conv2d_backward(
    x: &[impl Real],
    shape: ImageShape,
    weight: &[impl Real],
    outputs: usize,
    window: Window,
    dy: &[impl Real],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = window.kernel;
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; weight.len()];
    let mut db = vec![0.0; outputs];
    for (row, (n, out)) in positions(shape, window).into_iter().enumerate() {
        for o in 0..outputs {
            let g = f64_of(dy[row * outputs + o]);
            db[o] += g;
            for c in 0..shape.channels {
                for (ky, kx) in taps(window) {
                    if let Some(i) = tap(shape, window, n, out, (ky, kx), c) {
                        let w = ((o * shape.channels + c) * k + ky) * k + kx;
                        dw[w] += g * f64_of(x[i]);
                        dx[i] += g * f64_of(weight[w]);
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

/// The input index of each window's first maximum (row-major), per output value.
fn argmax(x: &[impl Real], shape: ImageShape, window: Window) -> Vec<usize> {
    let mut best = Vec::new();
    for (n, out) in positions(shape, window) {
        for c in 0..shape.channels {
            let mut at = None::<usize>;
            for tap_at in taps(window).filter_map(|t| tap(shape, window, n, out, t, c)) {
                if at.is_none_or(|a| f64_of(x[tap_at]) > f64_of(x[a])) {
                    at = Some(tap_at);
                }
            }
            best.extend(at);
        }
    }
    best
}

/// The maximum of each window, per channel.
pub fn max_pool(x: &[impl Real], shape: ImageShape, window: Window) -> Vec<f64> {
    argmax(x, shape, window)
        .into_iter()
        .map(|i| f64_of(x[i]))
        .collect()
}

/// dx: each window's dy added at its first maximum.
pub fn max_pool_backward(
    x: &[impl Real],
    shape: ImageShape,
    window: Window,
    dy: &[impl Real],
) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    for (out, i) in argmax(x, shape, window).into_iter().enumerate() {
        dx[i] += f64_of(dy[out]);
    }
    dx
}

/// `y[n, c]` = the mean of channel c over every position of image n.
pub fn avg_pool(x: &[impl Real], shape: ImageShape) -> Vec<f64> {
    let positions = shape.positions();
    let mut y = vec![0.0; shape.images * shape.channels];
    for (i, &v) in x.iter().enumerate() {
        let (n, c) = (i / (positions * shape.channels), i % shape.channels);
        y[n * shape.channels + c] += f64_of(v) / positions as f64;
    }
    y
}

/// `dx[n, y, x, c] = dy[n, c] / positions`.
pub fn avg_pool_backward(dy: &[impl Real], shape: ImageShape) -> Vec<f64> {
    let positions = shape.positions();
    (0..shape.numel())
        .map(|i| {
            let (n, c) = (i / (positions * shape.channels), i % shape.channels);
            f64_of(dy[n * shape.channels + c]) / positions as f64
        })
        .collect()
}

/// The channels-last images flattened in PyTorch's (c, h, w) order, as `nn.Flatten` does to
/// an NCHW tensor.
pub fn flatten(x: &[impl Real], shape: ImageShape) -> Vec<f64> {
    let (positions, channels) = (shape.positions(), shape.channels);
    (0..shape.numel())
        .map(|i| {
            let (n, rest) = (i / (positions * channels), i % (positions * channels));
            let (c, s) = (rest / positions, rest % positions);
            f64_of(x[(n * positions + s) * channels + c])
        })
        .collect()
}
