//! The matrix products of a training step timed alone, each checked against the CPU backend
//! before it is timed, with the FLOP model that turns times into rates.

use serde::Serialize;

use super::{Clock, device_timing, wall_timing};
use crate::cpu::CpuBackend;
use crate::graph::{Conv2d, LayerSpec, ModelSpec, SampleShape};
use crate::ops::matmul::{MatmulOps, MatrixLayout, Store};
use crate::{Error, Result};

/// Which product of a Linear layer's step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearProduct {
    /// y = x·Wᵀ + b.
    Forward,
    /// dW = dyᵀ·x, with db as the row sums of dyᵀ in the same pass.
    WeightGrad,
    /// dx = dy·W (every layer but the first).
    InputGrad,
}

/// One product of a step: its layer's `Sequential` index, which product, and its operands.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepProduct {
    /// The Linear layer's `Sequential` index.
    pub layer: usize,
    /// Which of its products.
    pub product: LinearProduct,
    /// a's layout (m×k), as the layer passes it.
    #[serde(skip)]
    pub a: MatrixLayout,
    /// b's layout (k×n).
    #[serde(skip)]
    pub b: MatrixLayout,
}

impl StepProduct {
    /// The product's sizes, m×k by k×n.
    pub fn label(&self) -> String {
        format!("{}x{}x{}", self.a.rows, self.a.cols, self.b.cols)
    }

    /// Multiply-adds counted as two FLOPs each.
    pub fn flops(&self) -> f64 {
        2.0 * (self.a.rows * self.a.cols * self.b.cols) as f64
    }
}

/// The products a training step of `spec` at `batch` rows runs, layer by layer.
pub fn step_products(spec: &ModelSpec, batch: usize) -> Vec<StepProduct> {
    let mut products = Vec::new();
    for (layer, node) in spec.nodes().iter().enumerate() {
        let input = node.input;
        // A convolution is the product of its patches (one row per output position) and W.
        let (rows, inputs, outputs) = match (node.layer, input) {
            (LayerSpec::Linear(linear), _) => (batch, input.len(), linear.outputs),
            (LayerSpec::Conv2d(Conv2d { outputs, window }), SampleShape::Image(image)) => {
                let Ok((height, width)) = window.output(image.height, image.width) else {
                    continue;
                };
                (
                    batch * height * width,
                    window.patch_len(image.channels),
                    outputs,
                )
            }
            _ => continue,
        };
        let x = MatrixLayout::row_major(rows, inputs);
        let w = MatrixLayout::row_major(outputs, inputs);
        let dy = MatrixLayout::row_major(rows, outputs);
        let mut add = |product, a, b| {
            products.push(StepProduct {
                layer,
                product,
                a,
                b,
            })
        };
        add(LinearProduct::Forward, x, w.transposed());
        add(LinearProduct::WeightGrad, dy.transposed(), x);
        if layer > 0 {
            add(LinearProduct::InputGrad, dy, w);
        }
    }
    products
}

/// A product's operands and outputs on one backend, in the buffers a step would use.
struct ProductRun<B: MatmulOps> {
    product: StepProduct,
    a: B::Buffer,
    b: B::Buffer,
    bias: B::Buffer,
    out: B::Buffer,
    row_sums: B::Buffer,
}

impl<B: MatmulOps> ProductRun<B> {
    /// Deterministic operands in [-0.5, 0.5).
    fn new(backend: &B, product: StepProduct) -> Result<Self> {
        let values = |len: usize, salt: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + salt) % 1000) as f32 * 1e-3 - 0.5)
                .collect()
        };
        let a_len = product.a.rows * product.a.cols;
        let b_len = product.b.rows * product.b.cols;
        Ok(Self {
            product,
            a: backend.upload(&values(a_len, 1))?,
            b: backend.upload(&values(b_len, 2))?,
            bias: backend.upload(&values(product.b.cols, 3))?,
            out: backend.scratch(product.a.rows * product.b.cols)?,
            row_sums: backend.scratch(product.a.rows)?,
        })
    }

    fn run(&mut self, backend: &B) -> Result<()> {
        let (a, b) = (self.product.a, self.product.b);
        match self.product.product {
            LinearProduct::Forward => {
                backend.matmul(&self.a, a, &self.b, b, Some(&self.bias), &mut self.out)?
            }
            LinearProduct::WeightGrad => backend.matmul_and_row_sums(
                &self.a,
                a,
                &self.b,
                b,
                &mut self.out,
                &mut self.row_sums,
                Store::Replace,
            )?,
            LinearProduct::InputGrad => {
                backend.matmul(&self.a, a, &self.b, b, None, &mut self.out)?
            }
        }
        backend.flush()
    }
}

/// Wall and device time of one product.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProductTiming {
    /// Wall time: record, submit and wait.
    pub wall: super::Timing,
    /// Device time from timestamp queries, where the adapter has them.
    pub device: Option<super::Timing>,
    /// The largest difference from the CPU backend's result, relative to the largest value of
    /// that result, checked before timing (0 on the CPU).
    pub difference_from_cpu: f64,
}

/// Products this far from the CPU backend's are wrong, not rounded differently: the error of
/// a k-term f32 sum is at most about k·2⁻²⁴ of its terms' magnitude.
const CPU_AGREEMENT: f64 = 1e-4;

/// Checks `product` on `backend` against the CPU backend, then times it.
pub fn time_product<B: MatmulOps + Clock>(
    backend: &B,
    product: StepProduct,
    warmup: usize,
    reps: usize,
) -> Result<ProductTiming> {
    let mut run = ProductRun::new(backend, product)?;
    let mut reference = ProductRun::new(&CpuBackend, product)?;
    run.run(backend)?;
    reference.run(&CpuBackend)?;
    let mut got = vec![backend.download(&run.out)?];
    let mut expected = vec![reference.out.to_vec()];
    // Only the weight gradient writes row sums.
    if product.product == LinearProduct::WeightGrad {
        got.push(backend.download(&run.row_sums)?);
        expected.push(reference.row_sums.to_vec());
    }
    let difference = relative_difference(&got, &expected);
    if difference.is_nan() || difference > CPU_AGREEMENT {
        return Err(Error::Gpu(format!(
            "the {:?} product {} differs from the CPU backend's by {difference:e} of its \
             largest value",
            product.product,
            product.label()
        )));
    }
    let mut work = || run.run(backend);
    let wall = wall_timing(backend, warmup, reps, &mut work)?;
    let device = device_timing(backend, reps, &mut work)?;
    Ok(ProductTiming {
        wall,
        device,
        difference_from_cpu: difference,
    })
}

/// The largest |x − y| over the largest |y|, over pairs of outputs.
fn relative_difference(got: &[Vec<f32>], expected: &[Vec<f32>]) -> f64 {
    let mut largest = 0.0f64;
    let mut difference = 0.0f64;
    for (got, expected) in got.iter().zip(expected) {
        for (&x, &y) in got.iter().zip(expected) {
            largest = largest.max(f64::from(y).abs());
            difference = difference.max((f64::from(x) - f64::from(y)).abs());
        }
    }
    difference / largest.max(f64::MIN_POSITIVE)
}
