//! A host program that owns its wgpu device runs BatchNorm through wgnorm on its own buffers,
//! recorded into its own command encoder, then reads the results back and checks them against
//! wgnorm's float64 reference.
//!
//!     cargo run --release --example embed_bn
//!
//! It needs only the library: `--no-default-features` builds it without the command line's
//! crates. The host uses wgnorm's re-exported wgpu, so both are the same version.

use wgnorm::gpu::GpuBackend;
use wgnorm::ops::batchnorm::{
    BatchNormConfig, BatchNormShape, HostBatchNormBackward, HostBatchNormForward, Mode, stat,
};
use wgnorm::reference::batchnorm as reference;
use wgnorm::wgpu;

/// What the host's own code would do: pick an adapter and open a device.
fn host_device() -> anyhow::Result<(wgpu::Device, wgpu::Queue)> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "no GPU adapter ({e}); on Linux: apt-get install mesa-vulkan-drivers libvulkan1"
                )
            })?;
    println!("host adapter: {}", adapter.get_info().name);
    Ok(pollster::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor::default()),
    )?)
}

fn storage(device: &wgpu::Device, label: &str, values: &[f32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(values),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
    })
}

/// Copies `buffers` into one mappable buffer in `encoder`'s submission and reads them.
fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    mut encoder: wgpu::CommandEncoder,
    buffers: &[&wgpu::Buffer],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let total: u64 = buffers.iter().map(|b| b.size()).sum();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host readback"),
        size: total,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut offset = 0;
    for buffer in buffers {
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, offset, buffer.size());
        offset += buffer.size();
    }
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let view = staging.slice(..).get_mapped_range()?;
    let all: &[f32] = bytemuck::cast_slice(&view);
    let mut start = 0;
    Ok(buffers
        .iter()
        .map(|b| {
            let len = (b.size() / 4) as usize;
            start += len;
            all[start - len..start].to_vec()
        })
        .collect())
}

fn max_error(label: &str, got: &[f32], want: &[f64]) -> anyhow::Result<f64> {
    anyhow::ensure!(
        got.len() == want.len(),
        "{label}: {} values, expected {}",
        got.len(),
        want.len()
    );
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max);
    println!("{label:>13}: max relative error {worst:.2e}");
    Ok(worst)
}

fn main() -> anyhow::Result<()> {
    let (device, queue) = host_device()?;
    let shape = BatchNormShape::new(64, 16, 9);
    let x: Vec<f32> = (0..shape.numel())
        .map(|i| ((i * 7919) % 1013) as f32 / 101.3 - 3.0)
        .collect();
    let dy: Vec<f32> = (0..shape.numel())
        .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
        .collect();
    let gamma: Vec<f32> = (0..shape.c).map(|c| 0.5 + c as f32 / 16.0).collect();
    let beta: Vec<f32> = (0..shape.c).map(|c| c as f32 / 8.0 - 1.0).collect();
    let zeros = vec![0.0f32; shape.c];
    let ones = vec![1.0f32; shape.c];

    // The host's buffers: wgnorm allocates none of these.
    let x_buf = storage(&device, "x", &x);
    let dy_buf = storage(&device, "dy", &dy);
    let gamma_buf = storage(&device, "gamma", &gamma);
    let beta_buf = storage(&device, "beta", &beta);
    let running_mean = storage(&device, "running mean", &zeros);
    let running_var = storage(&device, "running var", &ones);
    let y_buf = storage(&device, "y", &vec![0.0; shape.numel()]);
    let stats = storage(&device, "stats", &vec![0.0; shape.stats_len()]);
    let dx_buf = storage(&device, "dx", &vec![0.0; shape.numel()]);
    let dgamma = storage(&device, "dgamma", &zeros);
    let dbeta = storage(&device, "dbeta", &zeros);

    // wgnorm on the host's device; both passes go into the host's encoder.
    let wgnorm = GpuBackend::from_device(device.clone(), queue.clone());
    let config = BatchNormConfig::default();
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("host frame"),
    });
    wgnorm.record_batchnorm_forward(
        &mut encoder,
        Mode::Train,
        shape,
        config,
        &HostBatchNormForward {
            activations: wgnorm::Dtype::F32,
            x: &x_buf,
            gamma: &gamma_buf,
            beta: &beta_buf,
            running_mean: &running_mean,
            running_var: &running_var,
            y: &y_buf,
            stats: &stats,
        },
    )?;
    wgnorm.record_batchnorm_backward(
        &mut encoder,
        shape,
        &HostBatchNormBackward {
            activations: wgnorm::Dtype::F32,
            x: &x_buf,
            dy: &dy_buf,
            gamma: &gamma_buf,
            stats: &stats,
            dx: &dx_buf,
            dgamma: &dgamma,
            dbeta: &dbeta,
        },
    )?;
    // Nothing has run yet: the host submits when it chooses, here with its own readback.
    let out = read_back(
        &device,
        &queue,
        encoder,
        &[&y_buf, &stats, &running_var, &dx_buf, &dgamma, &dbeta],
    )?;

    let want = reference::forward_train(
        &x,
        shape,
        &gamma,
        &beta,
        &zeros,
        &ones,
        f64::from(config.eps()),
        f64::from(config.momentum()),
    );
    let grads = reference::backward(&x, &dy, shape, &gamma, f64::from(config.eps()));
    let mean = &out[1][stat::MEAN * shape.c..(stat::MEAN + 1) * shape.c];
    let errors = [
        max_error("y", &out[0], &want.y)?,
        max_error("mean", mean, &want.mean)?,
        max_error("running var", &out[2], &want.running_var)?,
        max_error("dx", &out[3], &grads.dx)?,
        max_error("dgamma", &out[4], &grads.dgamma)?,
        max_error("dbeta", &out[5], &grads.dbeta)?,
    ];
    let worst = errors.into_iter().fold(0.0, f64::max);
    anyhow::ensure!(
        worst < 1e-4,
        "BatchNorm on the host's buffers is off by {worst:.2e}"
    );
    println!("BatchNorm forward and backward on the host's device and buffers: ok");
    Ok(())
}
