//! One training step of the reference MLP (`cargo bench --bench training`): gather, forward,
//! cross-entropy, backward and Adam, on the CPU and on the GPU with each matmul schedule. GPU
//! timings are wall time including submit and the wait for the device. The data are synthetic
//! bytes: the speed does not depend on them.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgnorm::bench::{Clock, SyntheticStep};
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend, MatmulSchedule};
use wgnorm::graph::ModelSpec;

fn bench_backend<B: Clock>(c: &mut Criterion, name: &str, backend: &B) {
    let mut group = c.benchmark_group(format!("train_step/{name}"));
    for (model, batchnorm) in [("bn", true), ("nobn", false)] {
        for rows in [32, 256] {
            let spec = ModelSpec::reference_mlp(batchnorm);
            let mut step = SyntheticStep::new(backend, &spec, rows).expect("the model fits");
            let id = BenchmarkId::from_parameter(format!("{model}/batch{rows}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    step.run(backend).expect("step runs");
                    backend.finish().expect("device finishes");
                })
            });
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
