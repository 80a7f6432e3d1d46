//! Float64 references: the plain textbook formulas, computed in f64 from f32 inputs. Tests hold
//! both backends to these; they are public so that users can check their own tensors too.

pub mod batchnorm {
    use crate::ops::batchnorm::BatchNormShape;

    /// Everything a training-mode forward produces, in f64.
    pub struct Forward {
        pub y: Vec<f64>,
        pub mean: Vec<f64>,
        /// Biased variance.
        pub var: Vec<f64>,
        pub invstd: Vec<f64>,
        pub running_mean: Vec<f64>,
        pub running_var: Vec<f64>,
    }

    pub struct Grads {
        pub dx: Vec<f64>,
        pub dgamma: Vec<f64>,
        pub dbeta: Vec<f64>,
    }

    fn channel_values(
        x: &[f32],
        shape: BatchNormShape,
        channel: usize,
    ) -> impl Iterator<Item = f64> + '_ {
        (0..shape.n).flat_map(move |n| {
            let start = (n * shape.c + channel) * shape.s;
            x[start..start + shape.s].iter().map(|&v| v as f64)
        })
    }

    /// Two-pass mean and biased variance per channel.
    pub fn moments(x: &[f32], shape: BatchNormShape) -> (Vec<f64>, Vec<f64>) {
        let m = shape.per_channel() as f64;
        (0..shape.c)
            .map(|channel| {
                let mean = channel_values(x, shape, channel).sum::<f64>() / m;
                let var = channel_values(x, shape, channel)
                    .map(|v| (v - mean) * (v - mean))
                    .sum::<f64>()
                    / m;
                (mean, var)
            })
            .unzip()
    }

    /// y = γ·(x − mean)·invstd + β for per-channel mean and invstd.
    fn affine_normalize(
        x: &[f32],
        shape: BatchNormShape,
        mean: &[f64],
        invstd: &[f64],
        gamma: &[f32],
        beta: &[f32],
    ) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let channel = (i / shape.s) % shape.c;
                gamma[channel] as f64 * (v as f64 - mean[channel]) * invstd[channel]
                    + beta[channel] as f64
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        x: &[f32],
        shape: BatchNormShape,
        gamma: &[f32],
        beta: &[f32],
        running_mean: &[f32],
        running_var: &[f32],
        eps: f64,
        momentum: f64,
    ) -> Forward {
        let (mean, var) = moments(x, shape);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let m = shape.per_channel() as f64;
        let running_mean = running_mean
            .iter()
            .zip(&mean)
            .map(|(&r, mu)| (1.0 - momentum) * r as f64 + momentum * mu)
            .collect();
        let running_var = running_var
            .iter()
            .zip(&var)
            .map(|(&r, v)| (1.0 - momentum) * r as f64 + momentum * v * m / (m - 1.0))
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

    pub fn forward_eval(
        x: &[f32],
        shape: BatchNormShape,
        gamma: &[f32],
        beta: &[f32],
        running_mean: &[f32],
        running_var: &[f32],
        eps: f64,
    ) -> Vec<f64> {
        let mean: Vec<f64> = running_mean.iter().map(|&v| v as f64).collect();
        let invstd: Vec<f64> = running_var
            .iter()
            .map(|&v| 1.0 / (v as f64 + eps).sqrt())
            .collect();
        affine_normalize(x, shape, &mean, &invstd, gamma, beta)
    }

    /// Gradients of the training-mode forward, from the three-term formula.
    pub fn backward(
        x: &[f32],
        dy: &[f32],
        shape: BatchNormShape,
        gamma: &[f32],
        eps: f64,
    ) -> Grads {
        let (mean, var) = moments(x, shape);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let xhat = |i: usize| {
            let channel = (i / shape.s) % shape.c;
            (x[i] as f64 - mean[channel]) * invstd[channel]
        };
        let mut dgamma = vec![0.0; shape.c];
        let mut dbeta = vec![0.0; shape.c];
        for (i, &g) in dy.iter().enumerate() {
            let channel = (i / shape.s) % shape.c;
            dbeta[channel] += g as f64;
            dgamma[channel] += g as f64 * xhat(i);
        }
        let m = shape.per_channel() as f64;
        let dx = dy
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                let channel = (i / shape.s) % shape.c;
                gamma[channel] as f64 * invstd[channel] / m
                    * (m * g as f64 - dbeta[channel] - xhat(i) * dgamma[channel])
            })
            .collect();
        Grads { dx, dgamma, dbeta }
    }
}

pub mod matmul {
    use crate::ops::matmul::MatrixLayout;

    /// a·b (+ bias per column) in f64, row-major a.rows × b.cols.
    pub fn matmul(
        a: &[f32],
        a_layout: MatrixLayout,
        b: &[f32],
        b_layout: MatrixLayout,
        bias: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(a_layout.rows * b_layout.cols);
        for i in 0..a_layout.rows {
            for j in 0..b_layout.cols {
                let mut sum = bias.map_or(0.0, |bias| bias[j] as f64);
                for k in 0..a_layout.cols {
                    let x = a[i * a_layout.row_stride + k * a_layout.col_stride] as f64;
                    let y = b[k * b_layout.row_stride + j * b_layout.col_stride] as f64;
                    sum += x * y;
                }
                out.push(sum);
            }
        }
        out
    }
}
