//! `wgnorm bench`'s flags, their defaults, and which of them the chosen suites read.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::super::DataArgs;
use super::super::models::ModelChoice;
use wgnorm::ops::batchnorm::BatchNormShape;
use wgnorm::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Suite {
    /// BatchNorm forward, backward and both, per shape.
    Kernels,
    /// Training steps per batch size, time to the first step, one reference epoch.
    Train,
    /// Kernels and train.
    All,
    /// What data-parallel ranks' exchanges cost: all-reduces of gradient-sized buffers and
    /// BatchNorm's small gathers, between --ranks threads or the processes of mpirun.
    Distributed,
}

impl Suite {
    pub(super) fn name(self) -> &'static str {
        match self {
            Suite::Kernels => "kernels",
            Suite::Train => "train",
            Suite::All => "all",
            Suite::Distributed => "distributed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BenchDevices {
    /// The GPU (if an adapter exists; else a notice) and the CPU.
    Both,
    Gpu,
    Cpu,
}

/// A BatchNorm input shape as typed: NxC or NxCxHxW.
#[derive(Clone, Debug)]
pub(super) struct ShapeArg {
    pub(super) label: String,
    pub(super) shape: BatchNormShape,
}

pub(super) fn parse_shape(text: &str) -> std::result::Result<ShapeArg, String> {
    let dims = text
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| format!("'{text}' is not a shape like 4096x256 or 32x64x28x28"))?;
    let shape = BatchNormShape::from_dims(&dims).map_err(|e| e.to_string())?;
    if shape.per_channel() < 2 {
        return Err(format!(
            "'{text}' has one value per channel; training-mode BatchNorm needs at least 2"
        ));
    }
    Ok(ShapeArg {
        label: text.to_string(),
        shape,
    })
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Suite::All)]
    pub(super) suite: Suite,
    #[arg(long, value_enum, default_value_t = BenchDevices::Both)]
    pub(super) device: BenchDevices,
    /// Pick the adapter whose name contains this (case-insensitive); also WGNORM_ADAPTER.
    #[arg(long)]
    pub(super) adapter: Option<String>,
    /// Timed repetitions per measurement.
    #[arg(long, default_value_t = 20)]
    pub(super) reps: usize,
    /// Untimed runs before each measurement.
    #[arg(long, default_value_t = 3)]
    pub(super) warmup: usize,
    /// BatchNorm input shapes for the kernel suite, comma-separated
    /// [default: 32x128,256x128,4096x256,65536x256,32x64x28x28].
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    pub(super) shapes: Option<Vec<ShapeArg>>,
    /// Models for the train suite, comma-separated presets on MNIST [default: mlp-bn,mlp]; the
    /// first is also the one whose products and first step are timed.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(super) models: Option<Vec<ModelChoice>>,
    /// Batch sizes for the training-step suite, comma-separated [default: 16,32,64,128,256].
    #[arg(long, value_delimiter = ',')]
    pub(super) batch_sizes: Option<Vec<usize>>,
    /// Leave out the full epoch of the reference experiment (which needs MNIST).
    #[arg(long)]
    pub(super) no_epoch: bool,
    #[command(flatten)]
    pub(super) data: DataArgs,
    /// Write every measurement as JSON here.
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
    /// Draw time per training step against batch size (PNG) here.
    #[arg(long)]
    pub(super) plot: Option<PathBuf>,
    /// Ranks (threads of this process) for the distributed suite [default: 2; under mpirun,
    /// its processes].
    #[arg(long)]
    pub(super) ranks: Option<usize>,
}

impl BenchArgs {
    /// The kernel suite's shapes.
    pub(super) fn shapes(&self) -> Vec<ShapeArg> {
        self.shapes.clone().unwrap_or_else(|| {
            ["32x128", "256x128", "4096x256", "65536x256", "32x64x28x28"]
                .into_iter()
                .filter_map(|text| parse_shape(text).ok())
                .collect()
        })
    }

    /// The train suite's models.
    pub(super) fn models(&self) -> Vec<ModelChoice> {
        self.models
            .clone()
            .unwrap_or_else(|| vec![ModelChoice::MlpBn, ModelChoice::Mlp])
    }

    /// The train suite's batch sizes.
    pub(super) fn batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes
            .clone()
            .unwrap_or_else(|| vec![16, 32, 64, 128, 256])
    }

    /// Refuses a flag that the chosen suites would not read, naming what would.
    pub(super) fn refuse_unused_flags(&self) -> Result<()> {
        if self.suite == Suite::Distributed && self.device != BenchDevices::Both {
            return Err(Error::InvalidArgument(
                "--device has no effect here: the distributed suite exchanges host buffers"
                    .to_string(),
            ));
        }
        let kernels = matches!(self.suite, Suite::Kernels | Suite::All);
        let train = matches!(self.suite, Suite::Train | Suite::All);
        let distributed = self.suite == Suite::Distributed;
        let epoch = train && !self.no_epoch;
        super::super::refuse_adapter_on_cpu(
            self.device == BenchDevices::Cpu,
            self.adapter.is_some(),
        )?;
        let suite = self.suite.name();
        let without_epoch = format!("{suite} with --no-epoch");
        let epochless = if train { without_epoch.as_str() } else { suite };
        let unused = [
            (
                "--ranks",
                self.ranks.is_some() && !distributed,
                "the distributed suite",
                suite,
            ),
            (
                "--json",
                self.json.is_some() && distributed,
                "the kernels and train suites",
                suite,
            ),
            (
                "--adapter",
                self.adapter.is_some() && distributed,
                "the kernels and train suites",
                suite,
            ),
            (
                "--shapes",
                self.shapes.is_some() && !kernels,
                "the kernels suite",
                suite,
            ),
            (
                "--models",
                self.models.is_some() && !train,
                "the train suite",
                suite,
            ),
            (
                "--batch-sizes",
                self.batch_sizes.is_some() && !train,
                "the train suite",
                suite,
            ),
            (
                "--no-epoch",
                self.no_epoch && !train,
                "the train suite",
                suite,
            ),
            (
                "--plot",
                self.plot.is_some() && !train,
                "the train suite",
                suite,
            ),
            (
                "--data-dir",
                self.data.data_dir.is_some() && !epoch,
                "the train suite's reference epoch",
                epochless,
            ),
            (
                "--mirror",
                !self.data.mirror.is_empty() && !epoch,
                "the train suite's reference epoch",
                epochless,
            ),
        ];
        match unused.iter().find(|(_, unused, _, _)| *unused) {
            Some((flag, _, reader, running)) => Err(Error::InvalidArgument(format!(
                "{flag} has no effect here: only {reader} reads it, and --suite {running} runs \
                 none"
            ))),
            None => Ok(()),
        }
    }

    /// Whether every process under mpirun runs this bench (the distributed suite), rather than
    /// rank 0 alone.
    pub fn on_every_rank(&self) -> bool {
        self.suite == Suite::Distributed
    }
}
