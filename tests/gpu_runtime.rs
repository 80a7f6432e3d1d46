//! The GPU runtime: buffers are reused, limits are refused before dispatch, and a lost device
//! becomes an error instead of a panic.

mod common;

use common::{channel_data, gpu, rng};
use wgnorm::Backend;
use wgnorm::Error;
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormGrads, BatchNormOps, BatchNormShape, Mode, RunningStats,
};

/// One BatchNorm training step (forward, then backward with dy = y) on any backend; returns
/// dx, whose buffer is poisoned with NaN first so that an unwritten element shows.
fn step<B: BatchNormOps>(
    backend: &B,
    x: &[f32],
    shape: BatchNormShape,
) -> wgnorm::Result<Vec<f32>> {
    let x = backend.upload(x)?;
    let affine = Affine::<B> {
        gamma: backend.filled(shape.c, 1.0)?,
        beta: backend.filled(shape.c, 0.0)?,
    };
    let mut running = RunningStats::<B> {
        mean: backend.filled(shape.c, 0.0)?,
        var: backend.filled(shape.c, 1.0)?,
    };
    let out = backend.batchnorm_forward_new(
        Mode::Train,
        &x,
        shape,
        &affine,
        &mut running,
        BatchNormConfig::default(),
    )?;
    let mut grads = BatchNormGrads::<B> {
        dx: backend.filled(shape.numel(), f32::NAN)?,
        dgamma: backend.filled(shape.c, f32::NAN)?,
        dbeta: backend.filled(shape.c, f32::NAN)?,
    };
    backend.batchnorm_backward(&x, &out.y, shape, &affine.gamma, &out.stats, &mut grads)?;
    backend.download(&grads.dx)
}

#[test]
fn repeated_steps_reuse_pooled_buffers() {
    let Some(gpu) = gpu() else { return };
    // A private backend, so other tests' buffers do not enter the count.
    let gpu = GpuBackend::new(&AdapterRequest {
        name: Some(gpu.adapter().name.clone()),
    })
    .unwrap();
    let shape = BatchNormShape::new(300, 20, 1);
    let x = channel_data(&mut rng("pool"), shape.n, shape.c, shape.s);
    step(&gpu, &x, shape).unwrap();
    step(&gpu, &x, shape).unwrap();
    let after_warmup = gpu.pooled_buffers();
    for _ in 0..20 {
        step(&gpu, &x, shape).unwrap();
    }
    assert!(after_warmup > 0, "buffers should return to the pool");
    assert_eq!(
        gpu.pooled_buffers(),
        after_warmup,
        "the pool grew: buffers are not being reused"
    );
}

#[test]
fn buffers_beyond_the_adapter_limit_are_refused_naming_it() {
    let Some(gpu) = gpu() else { return };
    let too_many = (gpu.limits().max_buffer_size / 4 + 1) as usize;
    let err = gpu.filled(too_many, 0.0).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
}

#[test]
fn a_lost_device_gives_errors_not_panics() {
    let Some(gpu) = gpu() else { return };
    let gpu = GpuBackend::new(&AdapterRequest {
        name: Some(gpu.adapter().name.clone()),
    })
    .unwrap();
    let shape = BatchNormShape::new(8, 4, 1);
    let x = channel_data(&mut rng("lost"), shape.n, shape.c, shape.s);
    step(&gpu, &x, shape).unwrap();
    gpu.device().destroy();
    let err = step(&gpu, &x, shape).unwrap_err();
    assert!(matches!(err, Error::DeviceLost(_) | Error::Gpu(_)), "{err}");
}

#[test]
fn an_unknown_adapter_name_lists_the_adapters() {
    let Some(gpu) = gpu() else { return };
    let err = GpuBackend::new(&AdapterRequest {
        name: Some("no-such-adapter".into()),
    })
    .err()
    .expect("no adapter is called that");
    assert!(matches!(err, Error::NoAdapter(_)));
    assert!(err.to_string().contains(&gpu.adapter().name), "{err}");
}

/// Threads sharing one backend (and so one pending encoder and one buffer pool) each get their
/// own correct results: no readback may see data before the work that writes it is submitted,
/// and no buffer may be reused while unsubmitted work still reads it.
#[test]
fn threads_sharing_a_backend_get_their_own_results() {
    let Some(gpu) = gpu() else { return };
    let shape = BatchNormShape::new(3, 128, 1);
    let mut rng = rng("threads");
    let inputs: Vec<Vec<f32>> = (0..4)
        .map(|_| channel_data(&mut rng, shape.n, shape.c, shape.s))
        .collect();
    std::thread::scope(|scope| {
        for x in &inputs {
            scope.spawn(move || {
                let expected = step(&CpuBackend, x, shape).unwrap();
                for _ in 0..40 {
                    let dx = step(gpu, x, shape).unwrap();
                    for (got, want) in dx.iter().zip(&expected) {
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "dx {got} vs CPU {want}"
                        );
                    }
                }
            });
        }
    });
}

/// Several training steps recorded into one submission (hardware GPUs record 8; set here, as
/// lavapipe records 1) create nothing either once warm: each step of a submission gets buffers
/// and bind groups of its own, the same ones submission after submission.
#[test]
fn several_steps_per_submission_create_nothing_once_warm() {
    use wgnorm::graph::{HostModel, Init, ModelSpec, Sequential};
    use wgnorm::ops::loss::metric;
    use wgnorm::optim::{Optimizer, OptimizerConfig};
    use wgnorm::train::train_on_batch;
    const STEPS_PER_SUBMISSION: u64 = 8;
    if gpu().is_none() {
        return;
    }
    let gpu = &GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    gpu.set_steps_per_submission(STEPS_PER_SUBMISSION);
    let spec = ModelSpec::mlp(12, &[16], 4, true, 0.2).unwrap();
    let mut model =
        Sequential::upload(gpu, &spec, &HostModel::initial(&spec, Init::Keras, 3)).unwrap();
    let lens: Vec<usize> = spec.params().iter().map(|p| p.len()).collect();
    let mut optimizer = Optimizer::new(gpu, OptimizerConfig::adam(1e-3), &lens).unwrap();
    let mut metrics = gpu.filled(metric::LEN, 0.0).unwrap();
    let x: Vec<f32> = (0..8 * 12).map(|i| (i % 5) as f32 / 5.0).collect();
    let labels = gpu
        .upload(&[0.0, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0])
        .unwrap();
    let mut steps = |count: u64| {
        for _ in 0..count {
            let batch = gpu.upload(&x).unwrap();
            train_on_batch(
                gpu,
                &mut model,
                &mut optimizer,
                5,
                None,
                batch,
                &labels,
                &mut metrics,
                None,
            )
            .unwrap();
        }
    };
    steps(4 * STEPS_PER_SUBMISSION);
    gpu.wait().unwrap();
    let before = gpu.counters();
    steps(2 * STEPS_PER_SUBMISSION);
    let after = gpu.counters();
    eprintln!("{before:?} -> {after:?}");
    assert_eq!(after.submissions - before.submissions, 2, "submissions");
    assert_eq!(after.bind_groups, before.bind_groups, "bind groups created");
    assert_eq!(after.buffers, before.buffers, "buffers created");
    let per_step = (after.dispatches - before.dispatches) / (2 * STEPS_PER_SUBMISSION);
    assert!(per_step <= 10, "{per_step} dispatches per step");
}

/// Once the first steps have run, a training step creates nothing on the device: every
/// dispatch finds its bind group and writes its parameters into that group's uniform buffer.
#[test]
fn a_steady_state_training_step_creates_no_buffer_and_no_bind_group() {
    use wgnorm::graph::{Init, ModelSpec};
    use wgnorm::model::Classifier;
    use wgnorm::optim::OptimizerConfig;
    if gpu().is_none() {
        return;
    }
    // A device of its own: the shared one counts the work of the tests running beside this.
    let gpu = &GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    let spec = ModelSpec::mlp(12, &[16], 4, true, 0.2).unwrap();
    let mut model =
        Classifier::new(gpu, &spec, OptimizerConfig::adam(1e-3), Init::Keras, 1).unwrap();
    let x: Vec<f32> = (0..8 * 12).map(|i| (i % 7) as f32 / 7.0).collect();
    let labels: Vec<u32> = (0..8).map(|i| i % 4).collect();
    let step = |model: &mut Classifier<_>| model.train_batch_slices(gpu, &x, &labels).unwrap();
    // The pool settles on the same buffers for the same roles within a few steps.
    for _ in 0..8 {
        step(&mut model);
    }
    gpu.wait().unwrap();
    let before = gpu.counters();
    for _ in 0..5 {
        step(&mut model);
    }
    gpu.wait().unwrap();
    let after = gpu.counters();
    eprintln!("5 steady-state steps: {before:?} -> {after:?}");
    assert!(
        after.dispatches > before.dispatches,
        "the steps dispatched nothing"
    );
    // gather, two matmuls forward, BatchNorm+ReLU+dropout each way, the loss, two matmuls
    // for the output layer's gradients (its bias gradient inside), one for the hidden layer's,
    // one Adam update over the parameter arena.
    let per_step = (after.dispatches - before.dispatches) / 5;
    assert!(per_step <= 10, "{per_step} dispatches per step");
    assert_eq!(after.bind_groups, before.bind_groups, "bind groups created");
    assert_eq!(after.buffers, before.buffers, "buffers created");
    // Only the parameters that change from step to step are written: Adam's step size and bias
    // correction (one write per parameter tensor); the shapes stay.
    let writes = after.uniform_writes - before.uniform_writes;
    assert!(
        writes > 0 && writes < after.dispatches - before.dispatches,
        "{writes} uniform writes"
    );
    assert_eq!(
        after.submissions - before.submissions,
        5,
        "one submission per step"
    );
}

/// The backward pass computes no gradient that nothing reads: a flatten before the first layer
/// with parameters adds no dispatch to a training step, neither its own backward nor the input
/// gradient of the Linear after it. On one channel flattening moves nothing, so `flatten,fc10`
/// dispatches exactly what `fc10` does; on three it adds its forward transpose alone.
#[test]
fn a_flatten_before_the_first_layer_adds_no_backward_dispatch() {
    use wgnorm::graph::{Image, Init, MNIST_IMAGE, ModelSpec};
    use wgnorm::model::Classifier;
    use wgnorm::optim::OptimizerConfig;
    if gpu().is_none() {
        return;
    }
    // A device of its own: the shared one counts the work of the tests running beside this.
    let gpu = &GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    let per_step = |arch: &str, image: Image| -> u64 {
        let spec = ModelSpec::from_arch(arch, image, BatchNormConfig::default()).unwrap();
        let mut model =
            Classifier::new(gpu, &spec, OptimizerConfig::adam(1e-3), Init::Keras, 1).unwrap();
        let rows = 8;
        let x: Vec<f32> = (0..rows * spec.inputs())
            .map(|i| (i % 7) as f32 / 7.0)
            .collect();
        let labels: Vec<u32> = (0..rows as u32).map(|i| i % 10).collect();
        let mut steps = |count: usize| {
            for _ in 0..count {
                model.train_batch_slices(gpu, &x, &labels).unwrap();
            }
            gpu.wait().unwrap();
        };
        steps(3);
        let before = gpu.counters();
        steps(4);
        let dispatches = gpu.counters().dispatches - before.dispatches;
        assert_eq!(
            dispatches % 4,
            0,
            "{arch}: {dispatches} dispatches in 4 steps"
        );
        dispatches / 4
    };
    let plain = per_step("fc10", MNIST_IMAGE);
    assert!(plain > 0, "a step of fc10 dispatched nothing");
    assert_eq!(
        per_step("flatten,fc10", MNIST_IMAGE),
        plain,
        "flatten,fc10 on 1×28×28"
    );
    let image = Image {
        channels: 3,
        height: 4,
        width: 4,
    };
    assert_eq!(
        per_step("flatten,fc10", image),
        per_step("fc10", image) + 1,
        "flatten,fc10 on 3×4×4: the forward transpose alone"
    );
}
