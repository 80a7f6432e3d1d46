//! BatchNorm forward, backward and both on each backend, for regression tracking
//! (`cargo bench --bench batchnorm`), on the shapes of `wgnorm bench --suite kernels` without
//! the largest. GPU timings are wall time including submit and the wait for the device.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgnorm::bench::{BatchNormPass, BatchNormStep, Clock};
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::ops::batchnorm::BatchNormShape;

const SHAPES: [&[usize]; 4] = [&[32, 128], &[256, 128], &[4096, 256], &[32, 64, 28, 28]];

fn bench_backend<B: Clock>(c: &mut Criterion, name: &str, backend: &B) {
    let mut group = c.benchmark_group(format!("batchnorm/{name}"));
    for dims in SHAPES {
        let shape = BatchNormShape::from_dims(dims).expect("a valid shape");
        let mut step = BatchNormStep::new(backend, shape).expect("inputs fit the device");
        step.run(backend, BatchNormPass::Forward)
            .expect("forward runs");
        for pass in BatchNormPass::ALL {
            let label = dims.iter().map(usize::to_string).collect::<Vec<_>>();
            let id = BenchmarkId::new(pass.name(), label.join("x"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    step.run(backend, pass).expect("step runs");
                    backend.finish().expect("device finishes");
                })
            });
        }
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
