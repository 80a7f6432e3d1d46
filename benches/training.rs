//! One training step of the reference MLP (`cargo bench --bench training`): gather, forward,
//! cross-entropy, backward and Adam, on the CPU and on the GPU with each matmul schedule. GPU
//! timings are wall time including submit and the readback of the 4-value metrics buffer, which
//! waits for the whole step. The data are synthetic bytes: the speed does not depend on them.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::{CLASSES, PIXELS};
use wgnorm::gpu::{AdapterRequest, GpuBackend, MatmulSchedule};
use wgnorm::graph::{Compute, HostModel, Init, Mlp, ModelSpec, StepKey};
use wgnorm::ops::batchnorm::Mode;
use wgnorm::ops::data::DeviceImages;
use wgnorm::ops::loss::metric;
use wgnorm::optim::{Optimizer, OptimizerConfig};

const IMAGES: usize = 4096;

struct Step<B: Compute> {
    model: Mlp<B>,
    optimizer: Optimizer<B>,
    images: DeviceImages<B>,
    index: B::Indices,
    metrics: B::Buffer,
    rows: usize,
    step: u64,
}

impl<B: Compute> Step<B> {
    fn new(backend: &B, batchnorm: bool, rows: usize) -> wgnorm::Result<Self> {
        let spec = ModelSpec::reference_mlp(batchnorm);
        let pixels: Vec<u8> = (0..IMAGES * PIXELS)
            .map(|i| (i * 7919 % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..IMAGES).map(|i| (i % CLASSES) as u8).collect();
        let lens: Vec<usize> = spec.params().iter().map(|p| p.len()).collect();
        let order: Vec<u32> = (0..IMAGES as u32).collect();
        Ok(Self {
            model: Mlp::upload(backend, &spec, &HostModel::initial(&spec, Init::Keras, 0))?,
            optimizer: Optimizer::new(backend, OptimizerConfig::adam(1e-3), &lens)?,
            images: backend.upload_images(&pixels, PIXELS, &labels)?,
            index: backend.upload_indices(&order)?,
            metrics: backend.filled(metric::LEN, 0.0)?,
            rows,
            step: 0,
        })
    }

    fn run(&mut self, backend: &B) -> wgnorm::Result<Vec<f32>> {
        let rows = self.rows;
        let first = (self.step as usize * rows) % (IMAGES - rows);
        let mut x = backend.scratch(rows * PIXELS)?;
        let mut labels = backend.scratch(rows)?;
        backend.gather(&self.images, &self.index, first, &mut x, &mut labels)?;
        let key = StepKey {
            seed: 0,
            step: self.step,
        };
        let (logits, tape) = self.model.forward(backend, Mode::Train, x, rows, key)?;
        let mut dlogits = backend.scratch(rows * CLASSES)?;
        backend.softmax_cross_entropy(
            &logits,
            &labels,
            CLASSES,
            Some(&mut dlogits),
            &mut self.metrics,
        )?;
        let grads = self.model.backward(backend, tape, dlogits)?;
        self.optimizer
            .step(backend, self.model.params_mut(), &grads)?;
        self.step += 1;
        backend.download(&self.metrics)
    }
}

fn bench_backend<B: Compute>(c: &mut Criterion, name: &str, backend: &B) {
    let mut group = c.benchmark_group(format!("train_step/{name}"));
    for (model, batchnorm) in [("bn", true), ("nobn", false)] {
        for rows in [32, 256] {
            let mut step = Step::new(backend, batchnorm, rows).expect("the model fits the device");
            let id = BenchmarkId::from_parameter(format!("{model}/batch{rows}"));
            group.bench_function(id, |b| b.iter(|| step.run(backend).expect("step runs")));
        }
    }
    group.finish();
}

fn training(c: &mut Criterion) {
    bench_backend(c, "cpu", &CpuBackend);
    for (name, schedule) in [
        ("gpu-registers", MatmulSchedule::Registers),
        ("gpu-tiles", MatmulSchedule::WorkgroupTiles),
    ] {
        match GpuBackend::new(&AdapterRequest::from_flag_or_env(None)) {
            Ok(gpu) => {
                gpu.set_matmul_schedule(schedule);
                bench_backend(c, name, &gpu);
            }
            Err(e) => eprintln!("skipping GPU benchmarks: {e}"),
        }
    }
}

criterion_group!(benches, training);
criterion_main!(benches);
