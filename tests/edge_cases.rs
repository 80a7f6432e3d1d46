//! Edge cases where the two backends, or wgpu and wgnorm, could disagree: each ends in the same
//! error (or the same empty result) everywhere.

mod common;

use wgnorm::Backend;
use wgnorm::cpu::CpuBackend;
use wgnorm::graph::{Compute, HostModel, Init, ModelSpec, Sequential, StepKey};
use wgnorm::ops::batchnorm::Mode;
use wgnorm::ops::loss::{LossTotals, metric};

/// The error a batch with label 10 of 10 classes in row 1 ends in, read back as a trainer does.
fn out_of_range_label<B: Compute>(backend: &B) -> String {
    let logits = backend.upload(&[0.5; 20]).unwrap();
    let labels = backend.upload(&[3.0, 10.0]).unwrap();
    let mut dlogits = backend.scratch(20).unwrap();
    let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
    backend
        .softmax_cross_entropy(&logits, &labels, 10, Some(&mut dlogits), &mut metrics)
        .and_then(|()| LossTotals::from_metrics(&backend.download(&metrics)?))
        .expect_err("label 10 of 10 classes")
        .to_string()
}

#[test]
fn an_out_of_range_device_label_is_the_same_error_on_both_backends() {
    let cpu = out_of_range_label(&CpuBackend);
    assert!(cpu.contains("label 10 of row 1"), "{cpu}");
    let Some(gpu) = common::gpu() else { return };
    assert_eq!(out_of_range_label(gpu), cpu);
}

#[test]
fn scratch_of_no_values_has_no_values_on_both_backends() {
    assert_eq!(CpuBackend.len_of(&CpuBackend.scratch(0).unwrap()), 0);
    let Some(gpu) = common::gpu() else { return };
    assert_eq!(gpu.len_of(&gpu.scratch(0).unwrap()), 0);
    assert_eq!(
        gpu.download(&gpu.scratch(0).unwrap()).unwrap(),
        Vec::<f32>::new()
    );
}

fn backward_from_an_eval_tape<B: Compute>(backend: &B) -> String {
    let spec = ModelSpec::mlp(4, &[6], 3, true, 0.2).unwrap();
    let host = HostModel::initial(&spec, Init::Keras, 1);
    let mut mlp = Sequential::upload(backend, &spec, &host).unwrap();
    let key = StepKey::new(1, 1);
    let x = backend.upload(&[0.25; 8]).unwrap();
    let (_, tape) = mlp.forward(backend, Mode::Eval, x, 2, key).unwrap();
    let dlogits = backend.filled(6, 0.1).unwrap();
    match mlp.backward(backend, tape, dlogits) {
        Ok(_) => "backward accepted an eval-mode tape".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn backward_refuses_a_tape_from_an_eval_forward() {
    let cpu = backward_from_an_eval_tape(&CpuBackend);
    assert!(cpu.contains("training-mode forward"), "{cpu}");
    let Some(gpu) = common::gpu() else { return };
    assert_eq!(backward_from_an_eval_tape(gpu), cpu);
}

#[test]
fn a_wgpu_validation_error_is_one_line() {
    // A context of its own: the validation error must not reach the shared test device.
    if common::gpu().is_none() {
        return;
    }
    let own =
        wgnorm::gpu::GpuBackend::new(&wgnorm::gpu::AdapterRequest::from_flag_or_env(None)).unwrap();
    // STORAGE without COPY_SRC: the readback's copy fails wgpu's validation.
    let raw = own.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("no copy_src"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let wrapped = own.wrap_buffer("x", &raw, 4, wgnorm::Dtype::F32).unwrap();
    let err = own.download(&wrapped).unwrap_err().to_string();
    assert!(err.starts_with("GPU error: "), "{err}");
    assert!(err.contains("COPY_SRC"), "{err}");
    assert!(!err.contains('\n'), "several lines: {err:?}");
}

#[test]
fn misusing_the_profiler_is_an_argument_error_not_a_gpu_fault() {
    let Some(gpu) = common::gpu() else { return };
    let err = gpu.finish_profiling().unwrap_err();
    assert!(matches!(err, wgnorm::Error::InvalidArgument(_)), "{err:?}");
}
