//! `wgnorm bn`: BatchNorm on the user's own `.npy` tensors, so our kernels can be checked
//! against any other framework.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Device, DeviceChoice};
use wgnorm::backend::{Backend, Dtype};
use wgnorm::data::npy::{self, Array};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats, stat,
};
use wgnorm::{Error, Result};

#[derive(Args)]
pub struct BnArgs {
    /// Input of shape (N, C) or (N, C, ...), float32/float64/float16.
    #[arg(long)]
    x: PathBuf,
    /// Scale γ of shape (C,); default ones.
    #[arg(long)]
    gamma: Option<PathBuf>,
    /// Shift β of shape (C,); default zeros.
    #[arg(long)]
    beta: Option<PathBuf>,
    /// Running mean of shape (C,) before the step; default zeros.
    #[arg(long)]
    running_mean: Option<PathBuf>,
    /// Running variance of shape (C,) before the step; default ones.
    #[arg(long)]
    running_var: Option<PathBuf>,
    /// Upstream gradient of x's shape: also run the backward pass.
    #[arg(long)]
    dy: Option<PathBuf>,
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    eps: f32,
    /// Weight of the new batch value in the running statistics (PyTorch convention).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    momentum: f32,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Pick the adapter whose name contains this (case-insensitive); also WGNORM_ADAPTER.
    #[arg(long)]
    adapter: Option<String>,
    /// Directory for the output .npy files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Storage of x, y, dy and dx on the device (f16 where the adapter has shader-f16, else f32
    /// with a notice); statistics, parameters and all arithmetic stay f32. Outputs are written
    /// as float32 .npy either way.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    dtype: Dtype,
}

/// Host-side inputs, validated against each other.
struct Inputs {
    x: Array,
    shape: BatchNormShape,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    dy: Option<Vec<f32>>,
}

fn per_channel(path: &Option<PathBuf>, channels: usize, default: f32) -> Result<Vec<f32>> {
    let Some(path) = path else {
        return Ok(vec![default; channels]);
    };
    let array = npy::read(path)?;
    if array.shape != [channels] {
        return Err(Error::Shape(format!(
            "{} has shape {:?}, expected ({channels},) for x's {channels} channels",
            path.display(),
            array.shape
        )));
    }
    Ok(array.data)
}

fn load(args: &BnArgs) -> Result<Inputs> {
    let x = npy::read(&args.x)?;
    let shape = BatchNormShape::from_dims(&x.shape)
        .map_err(|e| Error::Shape(format!("{}: {e}", args.x.display())))?;
    let dy = match &args.dy {
        None => None,
        Some(path) => {
            let dy = npy::read(path)?;
            if dy.shape != x.shape {
                return Err(Error::Shape(format!(
                    "{} has shape {:?}, expected x's shape {:?}",
                    path.display(),
                    dy.shape,
                    x.shape
                )));
            }
            Some(dy.data)
        }
    };
    Ok(Inputs {
        gamma: per_channel(&args.gamma, shape.c, 1.0)?,
        beta: per_channel(&args.beta, shape.c, 0.0)?,
        running_mean: per_channel(&args.running_mean, shape.c, 0.0)?,
        running_var: per_channel(&args.running_var, shape.c, 1.0)?,
        x,
        shape,
        dy,
    })
}

/// Named outputs: (file stem, shape, values).
type Outputs = Vec<(&'static str, Vec<usize>, Vec<f32>)>;

fn compute<B: BatchNormOps>(
    backend: &B,
    inputs: &Inputs,
    config: BatchNormConfig,
    dtype: Dtype,
) -> Result<Outputs> {
    let dtype = super::storage_or_f32(backend, dtype, "running");
    let shape = inputs.shape;
    let x = backend.upload_as(&inputs.x.data, dtype)?;
    let affine = Affine::<B> {
        gamma: backend.upload(&inputs.gamma)?,
        beta: backend.upload(&inputs.beta)?,
    };
    let mut running = RunningStats::<B> {
        mean: backend.upload(&inputs.running_mean)?,
        var: backend.upload(&inputs.running_var)?,
    };
    let mut forward = BatchNormForward {
        y: backend.scratch_as(shape.numel(), dtype)?,
        stats: backend.scratch(shape.stats_len())?,
    };
    backend.batchnorm_forward(
        Mode::Train,
        &x,
        shape,
        &affine,
        &mut running,
        config,
        &mut forward,
    )?;
    let stats = backend.download(&forward.stats)?;
    let plane = |p: usize| stats[p * shape.c..(p + 1) * shape.c].to_vec();
    let channels = vec![shape.c];
    let mut outputs: Outputs = vec![
        ("y", inputs.x.shape.clone(), backend.download(&forward.y)?),
        ("mean", channels.clone(), plane(stat::MEAN)),
        ("var", channels.clone(), plane(stat::VAR)),
        ("invstd", channels.clone(), plane(stat::INVSTD)),
        (
            "running_mean",
            channels.clone(),
            backend.download(&running.mean)?,
        ),
        (
            "running_var",
            channels.clone(),
            backend.download(&running.var)?,
        ),
    ];
    if let Some(dy) = &inputs.dy {
        let dy = backend.upload_as(dy, dtype)?;
        let mut grads = BatchNormGrads {
            dx: backend.scratch_as(shape.numel(), dtype)?,
            dgamma: backend.scratch(shape.c)?,
            dbeta: backend.scratch(shape.c)?,
        };
        backend.batchnorm_backward(&x, &dy, shape, &affine.gamma, &forward.stats, &mut grads)?;
        outputs.push(("dx", inputs.x.shape.clone(), backend.download(&grads.dx)?));
        outputs.push(("dgamma", channels.clone(), backend.download(&grads.dgamma)?));
        outputs.push(("dbeta", channels, backend.download(&grads.dbeta)?));
    }
    Ok(outputs)
}

fn save(dir: &Path, outputs: &Outputs) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, shape, values) in outputs {
        npy::write(&dir.join(format!("{name}.npy")), shape, values)?;
    }
    Ok(())
}

pub fn run(args: BnArgs) -> Result<()> {
    let inputs = load(&args)?;
    let config = BatchNormConfig::new(args.eps, args.momentum, true)?;
    let device = Device::open(args.device, args.adapter.clone())?;
    let (outputs, ran_on) = match &device {
        Device::Gpu(gpu) => (compute(gpu, &inputs, config, args.dtype)?, gpu.describe()),
        Device::Cpu(cpu) => (compute(cpu, &inputs, config, args.dtype)?, cpu.describe()),
    };
    save(&args.out, &outputs)?;
    let names: Vec<&str> = outputs.iter().map(|(name, _, _)| *name).collect();
    println!("ran on: {ran_on}");
    println!("wrote {} to {}", names.join(", "), args.out.display());
    Ok(())
}
