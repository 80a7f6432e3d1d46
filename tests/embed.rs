//! wgnorm embedded in a host program: a context on the host's device, ops recorded into the
//! host's encoder on the host's buffers, and errors that name the bad argument.

mod common;

use wgnorm::Backend;
use wgnorm::gpu::GpuBackend;
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormOps, BatchNormShape, HostBatchNormForward, Mode, RunningStats,
};

const SHAPE: BatchNormShape = BatchNormShape::new(8, 3, 5);

fn buffer(backend: &GpuBackend, values: &[f32], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    let buffer = backend.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("host"),
        size: (values.len() * 4) as u64,
        usage,
        mapped_at_creation: false,
    });
    backend
        .queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(values));
    buffer
}

const HOST_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

fn x_values() -> Vec<f32> {
    (0..SHAPE.numel()).map(|i| (i % 7) as f32 - 2.5).collect()
}

/// The host's buffers for a forward of SHAPE, with `gamma` of `gamma_len` values and `y`
/// created with `y_usage`.
struct HostBuffers {
    x: wgpu::Buffer,
    gamma: wgpu::Buffer,
    beta: wgpu::Buffer,
    mean: wgpu::Buffer,
    var: wgpu::Buffer,
    y: wgpu::Buffer,
    stats: wgpu::Buffer,
}

impl HostBuffers {
    fn new(host: &GpuBackend, gamma_len: usize, y_usage: wgpu::BufferUsages) -> Self {
        let c = SHAPE.c;
        Self {
            x: buffer(host, &x_values(), HOST_USAGE),
            gamma: buffer(host, &vec![1.0; gamma_len], HOST_USAGE),
            beta: buffer(host, &vec![0.0; c], HOST_USAGE),
            mean: buffer(host, &vec![0.0; c], HOST_USAGE),
            var: buffer(host, &vec![1.0; c], HOST_USAGE),
            y: buffer(host, &vec![0.0; SHAPE.numel()], y_usage),
            stats: buffer(host, &vec![0.0; SHAPE.stats_len()], HOST_USAGE),
        }
    }

    /// Records a forward on these buffers into `encoder`.
    fn record(
        &self,
        wgnorm: &GpuBackend,
        encoder: &mut wgpu::CommandEncoder,
        mode: Mode,
    ) -> wgnorm::Result<()> {
        wgnorm.record_batchnorm_forward(
            encoder,
            mode,
            SHAPE,
            BatchNormConfig::default(),
            &self.forward(),
        )
    }

    fn forward(&self) -> HostBatchNormForward<'_> {
        HostBatchNormForward {
            activations: wgnorm::Dtype::F32,
            x: &self.x,
            gamma: &self.gamma,
            beta: &self.beta,
            running_mean: &self.mean,
            running_var: &self.var,
            y: &self.y,
            stats: &self.stats,
        }
    }
}

fn encoder(backend: &GpuBackend) -> wgpu::CommandEncoder {
    backend
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
}

/// A second context on the shared test GPU's device, as a host that owns the device makes it.
fn hosted() -> Option<GpuBackend> {
    let gpu = common::gpu()?;
    Some(GpuBackend::from_device(
        gpu.device().clone(),
        gpu.queue().clone(),
    ))
}

#[test]
fn work_recorded_into_the_hosts_encoder_runs_when_the_host_submits() {
    let Some(wgnorm) = hosted() else { return };
    let host = HostBuffers::new(&wgnorm, SHAPE.c, HOST_USAGE);
    let mut encoder = encoder(&wgnorm);
    host.record(&wgnorm, &mut encoder, Mode::Train).unwrap();
    let y = wgnorm
        .wrap_buffer("y", &host.y, SHAPE.numel(), wgnorm::Dtype::F32)
        .unwrap();
    let before = wgnorm.download(&y).unwrap();
    assert!(
        before.iter().all(|&v| v == 0.0),
        "ran before the host submitted"
    );

    wgnorm.queue().submit([encoder.finish()]);
    let after = wgnorm.download(&y).unwrap();
    // Same op through wgnorm's own buffers and encoder.
    let x = wgnorm.upload(&x_values()).unwrap();
    let affine = Affine {
        gamma: wgnorm.filled(SHAPE.c, 1.0).unwrap(),
        beta: wgnorm.filled(SHAPE.c, 0.0).unwrap(),
    };
    let mut running = RunningStats {
        mean: wgnorm.filled(SHAPE.c, 0.0).unwrap(),
        var: wgnorm.filled(SHAPE.c, 1.0).unwrap(),
    };
    let own = wgnorm
        .batchnorm_forward_new(
            Mode::Train,
            &x,
            SHAPE,
            &affine,
            &mut running,
            BatchNormConfig::default(),
        )
        .unwrap();
    assert_eq!(after, wgnorm.download(&own.y).unwrap());
    assert!(after.iter().any(|&v| v != 0.0));
}

#[test]
fn a_host_buffer_of_the_wrong_size_is_refused_naming_it_and_the_size() {
    let Some(wgnorm) = hosted() else { return };
    let host = HostBuffers::new(&wgnorm, SHAPE.c - 1, HOST_USAGE);
    let mut encoder = encoder(&wgnorm);
    let err = host
        .record(&wgnorm, &mut encoder, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gamma") && err.contains("expected at least 12 bytes"),
        "{err}"
    );
    // The host's encoder is still usable and holds nothing of wgnorm's.
    wgnorm.queue().submit([encoder.finish()]);
}

#[test]
fn a_host_buffer_without_storage_usage_is_refused_naming_it() {
    let Some(wgnorm) = hosted() else { return };
    let host = HostBuffers::new(
        &wgnorm,
        SHAPE.c,
        wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    );
    let err = host
        .record(&wgnorm, &mut encoder(&wgnorm), Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid argument: y:") && err.contains("STORAGE"),
        "{err}"
    );
}

#[test]
fn two_contexts_in_one_process_work_independently() {
    let Some(first) = hosted() else { return };
    let Some(second) = hosted() else { return };
    let a = first.upload(&[1.0, 2.0, 3.0]).unwrap();
    let b = second.upload(&[4.0, 5.0]).unwrap();
    drop(a);
    first.flush().unwrap();
    assert_eq!(second.download(&b).unwrap(), vec![4.0, 5.0]);
    assert_eq!(
        first.pooled_buffers(),
        1,
        "the first context's pool holds its buffer"
    );
    assert_eq!(
        second.pooled_buffers(),
        1,
        "the second's holds only its staging buffer"
    );
}

#[test]
fn another_thread_neither_records_into_the_hosts_encoder_nor_loses_its_work() {
    use wgnorm::ops::activation::ActivationOps;
    let Some(wgnorm) = hosted() else { return };
    let rounds = 300;
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            for round in 0..rounds {
                let values: Vec<f32> = (0..64).map(|i| (round + i) as f32 - 40.0).collect();
                let x = wgnorm.upload(&values).unwrap();
                let mut y = wgnorm.scratch(values.len()).unwrap();
                wgnorm.relu_forward(&x, &mut y).unwrap();
                let want: Vec<f32> = values.iter().map(|v| v.max(0.0)).collect();
                assert_eq!(wgnorm.download(&y).unwrap(), want, "round {round}");
            }
        });
        let host = HostBuffers::new(&wgnorm, SHAPE.c, HOST_USAGE);
        let y = wgnorm
            .wrap_buffer("y", &host.y, SHAPE.numel(), wgnorm::Dtype::F32)
            .unwrap();
        for round in 0..rounds {
            // Several records per encoder keep the host's recording open long enough to race.
            let mut encoder = encoder(&wgnorm);
            for _ in 0..8 {
                host.record(&wgnorm, &mut encoder, Mode::Eval).unwrap();
            }
            wgnorm.queue().submit([encoder.finish()]);
            // Eval with running mean 0 and variance 1 is y = x/sqrt(1 + eps).
            let got = wgnorm.download(&y).unwrap();
            let want: Vec<f32> = x_values()
                .iter()
                .map(|v| v / (1.0f32 + 1e-5).sqrt())
                .collect();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "round {round}: {g} vs {w}");
            }
        }
        worker.join().unwrap();
    });
}
