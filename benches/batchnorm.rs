//! BatchNorm forward + backward on both backends, for regression tracking
//! (`cargo bench --bench batchnorm`). GPU timings are wall time including submit and readback
//! of dγ, the smallest output, which waits for the whole step.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats,
};

const SHAPES: [BatchNormShape; 3] = [
    BatchNormShape {
        n: 32,
        c: 128,
        s: 1,
    },
    BatchNormShape {
        n: 4096,
        c: 256,
        s: 1,
    },
    BatchNormShape {
        n: 32,
        c: 64,
        s: 784,
    },
];

/// Inputs and reusable outputs of one training step on a backend.
struct Step<B: BatchNormOps> {
    shape: BatchNormShape,
    x: B::Buffer,
    dy: B::Buffer,
    affine: Affine<B>,
    running: RunningStats<B>,
    forward: BatchNormForward<B>,
    grads: BatchNormGrads<B>,
}

impl<B: BatchNormOps> Step<B> {
    fn new(backend: &B, shape: BatchNormShape) -> wgnorm::Result<Self> {
        let x: Vec<f32> = (0..shape.numel())
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        Ok(Self {
            shape,
            dy: backend.upload(&x.iter().map(|v| v - 0.5).collect::<Vec<_>>())?,
            x: backend.upload(&x)?,
            affine: Affine {
                gamma: backend.filled(shape.c, 1.0)?,
                beta: backend.filled(shape.c, 0.0)?,
            },
            running: RunningStats {
                mean: backend.filled(shape.c, 0.0)?,
                var: backend.filled(shape.c, 1.0)?,
            },
            forward: BatchNormForward {
                y: backend.filled(shape.numel(), 0.0)?,
                stats: backend.filled(shape.stats_len(), 0.0)?,
            },
            grads: BatchNormGrads {
                dx: backend.filled(shape.numel(), 0.0)?,
                dgamma: backend.filled(shape.c, 0.0)?,
                dbeta: backend.filled(shape.c, 0.0)?,
            },
        })
    }

    fn run(&mut self, backend: &B) -> wgnorm::Result<Vec<f32>> {
        let config = BatchNormConfig::default();
        backend.batchnorm_forward(
            Mode::Train,
            &self.x,
            self.shape,
            &self.affine,
            &mut self.running,
            config,
            &mut self.forward,
        )?;
        backend.batchnorm_backward(
            &self.x,
            &self.dy,
            self.shape,
            &self.affine.gamma,
            &self.forward.stats,
            &mut self.grads,
        )?;
        backend.download(&self.grads.dgamma)
    }
}

fn bench_backend<B: BatchNormOps>(c: &mut Criterion, name: &str, backend: &B) {
    let mut group = c.benchmark_group(format!("batchnorm_train_step/{name}"));
    for shape in SHAPES {
        let mut step = Step::new(backend, shape).expect("inputs fit the device");
        let id = BenchmarkId::from_parameter(format!("{}x{}x{}", shape.n, shape.c, shape.s));
        group.bench_function(id, |b| b.iter(|| step.run(backend).expect("step runs")));
    }
    group.finish();
}

fn batchnorm(c: &mut Criterion) {
    bench_backend(c, "cpu", &CpuBackend);
    match GpuBackend::new(&AdapterRequest::from_flag_or_env(None)) {
        Ok(gpu) => bench_backend(c, "gpu", &gpu),
        Err(e) => eprintln!("skipping GPU benchmarks: {e}"),
    }
}

criterion_group!(benches, batchnorm);
criterion_main!(benches);
