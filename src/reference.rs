//! Float64 references: the plain textbook formulas, computed in f64 from f32 inputs. Tests hold
//! both backends to these; they are public so that users can check their own tensors too.

/// f32 inputs (what the backends compute on) or f64 ones (for finite differences).
pub trait Real: Copy + Into<f64> {}

impl<T: Copy + Into<f64>> Real for T {}

fn f64_of(value: impl Real) -> f64 {
    value.into()
}

/// Two-pass mean and biased variance of the values of x grouped by `statistic_of(i)` into
/// `statistics` sets of `m` values each (BatchNorm's channels, GroupNorm's groups).
fn grouped_moments(
    x: &[impl Real],
    statistics: usize,
    statistic_of: impl Fn(usize) -> usize,
) -> (Vec<f64>, Vec<f64>) {
    let m = (x.len() / statistics) as f64;
    let mut mean = vec![0.0; statistics];
    for (i, &v) in x.iter().enumerate() {
        mean[statistic_of(i)] += f64_of(v) / m;
    }
    let mut var = vec![0.0; statistics];
    for (i, &v) in x.iter().enumerate() {
        let k = statistic_of(i);
        var[k] += (f64_of(v) - mean[k]) * (f64_of(v) - mean[k]) / m;
    }
    (mean, var)
}

pub mod groupnorm;
pub mod spatial;

/// BatchNorm in f64.
pub mod batchnorm {
    use super::{Real, f64_of};
    use crate::ops::batchnorm::BatchNormShape;

    /// Everything a training-mode forward produces, in f64.
    pub struct Forward {
        /// Normalized output.
        pub y: Vec<f64>,
        /// Batch mean per channel (per ghost batch and channel, ghost-major, with ghost batches).
        pub mean: Vec<f64>,
        /// Biased variance, laid out as `mean`.
        pub var: Vec<f64>,
        /// 1/sqrt(var + eps), laid out as `mean`.
        pub invstd: Vec<f64>,
        /// Running mean after the update (from the mean of the ghost batches' means).
        pub running_mean: Vec<f64>,
        /// Running variance after the update (unbiased batch variance, PyTorch; with ghost
        /// batches the mean of theirs).
        pub running_var: Vec<f64>,
    }

    /// Gradients of the training-mode forward, in f64.
    pub struct Grads {
        /// dL/dx.
        pub dx: Vec<f64>,
        /// dL/dγ.
        pub dgamma: Vec<f64>,
        /// dL/dβ.
        pub dbeta: Vec<f64>,
    }

    /// Where element i's statistics are: ghost batch · C + channel (the channel alone without
    /// ghost batches).
    fn statistic_of(shape: BatchNormShape, i: usize) -> usize {
        let sample = i / (shape.c * shape.s);
        let ghost = sample / (shape.n / shape.ghost_batches);
        ghost * shape.c + (i / shape.s) % shape.c
    }

    /// Two-pass mean and biased variance per channel, or per ghost batch and channel.
    pub fn moments(x: &[impl Real], shape: BatchNormShape) -> (Vec<f64>, Vec<f64>) {
        super::grouped_moments(x, shape.ghost_batches * shape.c, |i| statistic_of(shape, i))
    }

    /// y = γ·(x − mean)·invstd + β for mean and invstd per `statistic_of`.
    fn affine_normalize(
        x: &[impl Real],
        shape: BatchNormShape,
        mean: &[f64],
        invstd: &[f64],
        gamma: &[impl Real],
        beta: &[impl Real],
    ) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let (k, channel) = (statistic_of(shape, i), (i / shape.s) % shape.c);
                f64_of(gamma[channel]) * (f64_of(v) - mean[k]) * invstd[k] + f64_of(beta[channel])
            })
            .collect()
    }

    /// The sum over the ghost batches of a per-(ghost batch, channel) value.
    fn ghost_sum(values: &[f64], shape: BatchNormShape) -> Vec<f64> {
        (0..shape.c)
            .map(|channel| {
                (0..shape.ghost_batches)
                    .map(|g| values[g * shape.c + channel])
                    .sum()
            })
            .collect()
    }

    /// The mean over the ghost batches of a per-(ghost batch, channel) value.
    fn ghost_mean(values: &[f64], shape: BatchNormShape) -> Vec<f64> {
        let ghosts = shape.ghost_batches as f64;
        ghost_sum(values, shape)
            .iter()
            .map(|v| v / ghosts)
            .collect()
    }

    /// Training-mode forward: batch statistics, normalize, running update.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        x: &[impl Real],
        shape: BatchNormShape,
        gamma: &[impl Real],
        beta: &[impl Real],
        running_mean: &[impl Real],
        running_var: &[impl Real],
        eps: f64,
        momentum: f64,
    ) -> Forward {
        let (mean, var) = moments(x, shape);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let m = shape.per_channel() as f64;
        let running_mean = running_mean
            .iter()
            .zip(ghost_mean(&mean, shape))
            .map(|(&r, mu)| (1.0 - momentum) * f64_of(r) + momentum * mu)
            .collect();
        let running_var = running_var
            .iter()
            .zip(ghost_mean(&var, shape))
            .map(|(&r, v)| (1.0 - momentum) * f64_of(r) + momentum * v * m / (m - 1.0))
            .collect();
        Forward {
            y: affine_normalize(x, shape, &mean, &invstd, gamma, beta),
            mean,
            var,
            invstd,
            running_mean,
            running_var,
        }
    }

    /// Eval-mode forward with the running statistics (ghost batches play no part).
    pub fn forward_eval(
        x: &[impl Real],
        shape: BatchNormShape,
        gamma: &[impl Real],
        beta: &[impl Real],
        running_mean: &[impl Real],
        running_var: &[impl Real],
        eps: f64,
    ) -> Vec<f64> {
        let mean: Vec<f64> = running_mean.iter().map(|&v| f64_of(v)).collect();
        let invstd: Vec<f64> = running_var
            .iter()
            .map(|&v| 1.0 / (f64_of(v) + eps).sqrt())
            .collect();
        let whole = shape.with_ghost_batches(1);
        affine_normalize(x, whole, &mean, &invstd, gamma, beta)
    }

    /// Gradients of the training-mode forward, from the three-term formula per ghost batch; dγ
    /// and dβ summed over them.
    pub fn backward(
        x: &[impl Real],
        dy: &[impl Real],
        shape: BatchNormShape,
        gamma: &[impl Real],
        eps: f64,
    ) -> Grads {
        let (mean, var) = moments(x, shape);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let xhat = |i: usize| {
            let k = statistic_of(shape, i);
            (f64_of(x[i]) - mean[k]) * invstd[k]
        };
        let groups = shape.ghost_batches * shape.c;
        let mut sum_dy_xhat = vec![0.0; groups];
        let mut sum_dy = vec![0.0; groups];
        for (i, &g) in dy.iter().enumerate() {
            let k = statistic_of(shape, i);
            sum_dy[k] += f64_of(g);
            sum_dy_xhat[k] += f64_of(g) * xhat(i);
        }
        let m = shape.per_channel() as f64;
        let dx = dy
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                let (k, channel) = (statistic_of(shape, i), (i / shape.s) % shape.c);
                f64_of(gamma[channel]) * invstd[k] / m
                    * (m * f64_of(g) - sum_dy[k] - xhat(i) * sum_dy_xhat[k])
            })
            .collect();
        Grads {
            dx,
            dgamma: ghost_sum(&sum_dy_xhat, shape),
            dbeta: ghost_sum(&sum_dy, shape),
        }
    }
}

/// Matmul in f64.
pub mod matmul {
    use super::{Real, f64_of};
    use crate::ops::matmul::MatrixLayout;

    /// a·b (+ bias per column) in f64, row-major a.rows × b.cols.
    pub fn matmul(
        a: &[impl Real],
        a_layout: MatrixLayout,
        b: &[impl Real],
        b_layout: MatrixLayout,
        bias: Option<&[impl Real]>,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(a_layout.rows * b_layout.cols);
        for i in 0..a_layout.rows {
            for j in 0..b_layout.cols {
                let mut sum = bias.map_or(0.0, |bias| f64_of(bias[j]));
                for k in 0..a_layout.cols {
                    let x = f64_of(a[i * a_layout.row_stride + k * a_layout.col_stride]);
                    let y = f64_of(b[k * b_layout.row_stride + j * b_layout.col_stride]);
                    sum += x * y;
                }
                out.push(sum);
            }
        }
        out
    }
}

/// Activations: ReLU, dropout with a given keep mask, and the sum with an addend ahead of them.
pub mod activation {
    use super::{Real, f64_of};

    /// max(x, 0).
    pub fn relu(x: &[impl Real]) -> Vec<f64> {
        x.iter().map(|&v| f64_of(v).max(0.0)).collect()
    }

    /// dx = dy where x > 0, else 0.
    pub fn relu_backward(x: &[impl Real], dy: &[impl Real]) -> Vec<f64> {
        x.iter()
            .zip(dy)
            .map(|(&x, &g)| if f64_of(x) > 0.0 { f64_of(g) } else { 0.0 })
            .collect()
    }

    /// y = a + b: the addend's sum ahead of an activation (then `relu(&add(x, s))`, and
    /// `relu_backward(&add(x, s), dy)` is the dx that reaches both x and s).
    pub fn add(a: &[impl Real], b: &[impl Real]) -> Vec<f64> {
        assert_eq!(a.len(), b.len(), "the two terms of a sum");
        a.iter()
            .zip(b)
            .map(|(&a, &b)| f64_of(a) + f64_of(b))
            .collect()
    }

    /// y = x·keep/(1 − p); the same function maps dy to dx.
    pub fn dropout(x: &[impl Real], keep: &[bool], p: f64) -> Vec<f64> {
        x.iter()
            .zip(keep)
            .map(|(&v, &k)| if k { f64_of(v) / (1.0 - p) } else { 0.0 })
            .collect()
    }
}

/// Softmax cross-entropy, averaged over rows as PyTorch's `cross_entropy`.
pub mod loss {
    use super::{Real, f64_of};

    /// (mean loss, gradient of the mean loss with respect to the logits, correct predictions).
    pub fn softmax_cross_entropy(
        logits: &[impl Real],
        labels: &[usize],
        classes: usize,
    ) -> (f64, Vec<f64>, usize) {
        let rows = labels.len() as f64;
        let mut loss = 0.0;
        let mut correct = 0;
        let mut grad = Vec::with_capacity(logits.len());
        for (z, &label) in logits.chunks_exact(classes).zip(labels) {
            let z: Vec<f64> = z.iter().map(|&v| f64_of(v)).collect();
            let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = z.iter().map(|v| (v - top).exp()).sum();
            loss += total.ln() + top - z[label];
            let best = z.iter().position(|&v| v == top).unwrap_or(0);
            correct += usize::from(best == label);
            for (j, v) in z.iter().enumerate() {
                let onehot = if j == label { 1.0 } else { 0.0 };
                grad.push(((v - top).exp() / total - onehot) / rows);
            }
        }
        (loss / rows, grad, correct)
    }

    /// The predicted class of each row: the first j with the largest logit (a later value must
    /// be strictly larger, so a NaN never wins).
    pub fn argmax(logits: &[impl Real], classes: usize) -> Vec<usize> {
        logits
            .chunks_exact(classes)
            .map(|z| {
                let mut best = 0;
                for (j, &value) in z.iter().enumerate().skip(1) {
                    if f64_of(value) > f64_of(z[best]) {
                        best = j;
                    }
                }
                best
            })
            .collect()
    }
}

/// One optimizer step in f64, as `torch.optim` defines it.
pub mod optimizer {
    use super::{Real, f64_of};

    /// (θ, m, v) after Adam step t (1-based); with `weight_decay`, AdamW's step (θ shrinks by
    /// lr·weight_decay first).
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        param: &[impl Real],
        grad: &[impl Real],
        m: &[impl Real],
        v: &[impl Real],
        lr: f64,
        (beta1, beta2): (f64, f64),
        eps: f64,
        weight_decay: f64,
        t: u64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let bias1 = 1.0 - beta1.powf(t as f64);
        let bias2 = 1.0 - beta2.powf(t as f64);
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..param.len() {
            let g = f64_of(grad[i]);
            let m = beta1 * f64_of(m[i]) + (1.0 - beta1) * g;
            let v = beta2 * f64_of(v[i]) + (1.0 - beta2) * g * g;
            let decayed = f64_of(param[i]) * (1.0 - lr * weight_decay);
            out.0
                .push(decayed - lr / bias1 * m / ((v / bias2).sqrt() + eps));
            out.1.push(m);
            out.2.push(v);
        }
        out
    }

    /// (θ, momentum buffer) after one SGD step, with L2 `weight_decay` added to the gradient.
    pub fn sgd(
        param: &[impl Real],
        grad: &[impl Real],
        buffer: &[impl Real],
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let buffer: Vec<f64> = buffer
            .iter()
            .zip(grad)
            .zip(param)
            .map(|((&b, &g), &p)| momentum * f64_of(b) + (f64_of(g) + weight_decay * f64_of(p)))
            .collect();
        let param = param
            .iter()
            .zip(&buffer)
            .map(|(&p, b)| f64_of(p) - lr * b)
            .collect();
        (param, buffer)
    }
}
