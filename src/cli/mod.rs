//! The `wgnorm` command line. Every failure ends in one line on stderr and a non-zero exit:
//! 2 for bad flags and bad input, 1 for failures of the machine (GPU errors, device loss).

mod bench;
mod bn;
mod compare;
mod data_parallel;
mod devices;
mod eval;
mod experiment;
mod export;
mod inspect;
mod metrics;
mod models;
mod predict;
mod recalibrate;
mod run_args;
mod sweep;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use wgnorm::Error;
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend, device};

#[derive(Parser)]
#[command(
    name = "wgnorm",
    version,
    about = "Train MLPs and CNNs with BatchNorm, LayerNorm, GroupNorm or InstanceNorm on MNIST \
             and Fashion-MNIST, on any GPU through wgpu compute shaders or on the CPU",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu can see, best first, and what --device auto runs on.
    Devices,
    /// Run BatchNorm (training-mode forward, and backward with --dy) on .npy tensors.
    Bn(Box<bn::BnArgs>),
    /// Train a preset (MLP, CNN or ResNet, with the normalization of --norm) or any --arch stack on
    /// MNIST or Fashion-MNIST, saving it after every epoch.
    Train(Box<train::TrainArgs>),
    /// Test loss and accuracy of a saved model.
    Eval(Box<eval::EvalArgs>),
    /// Classify your own images (PNG, .npy) with a saved model.
    Predict(Box<predict::PredictArgs>),
    /// Write a saved model for deployment as safetensors (f32 or f16) or ONNX, optionally with
    /// BatchNorm folded into the layer before it.
    Export(Box<export::ExportArgs>),
    /// Every BatchNorm layer of a saved model: γ, β, running statistics and, with
    /// --data-dir, how far eval mode is from training mode.
    Inspect(Box<inspect::InspectArgs>),
    /// Recompute a saved model's BatchNorm running statistics from training batches
    /// (PreciseBN) and report its accuracy before and after.
    Recalibrate(Box<recalibrate::RecalibrateArgs>),
    /// Train the MLP, the CNN or a ResNet with each of several normalizations (by default without and
    /// with BatchNorm) under the same protocol and seeds, and compare them.
    Compare(Box<compare::CompareArgs>),
    /// Train each model (and normalization) over batch sizes and learning rates, and tabulate
    /// and plot the results.
    Sweep(Box<sweep::SweepArgs>),
    /// Time BatchNorm kernels and training steps on the GPU and the CPU.
    Bench(Box<bench::BenchArgs>),
}

/// `dtype` where `backend` can store it; else F32, saying so in one line ("note: cpu cannot
/// store F16; training in F32").
fn storage_or_f32<B: wgnorm::Backend>(
    backend: &B,
    dtype: wgnorm::Dtype,
    doing: &str,
) -> wgnorm::Dtype {
    if backend.supports(dtype) {
        return dtype;
    }
    eprintln!(
        "note: {} cannot store {dtype:?}; {doing} in F32",
        backend.describe()
    );
    wgnorm::Dtype::F32
}

/// Set by Ctrl-C; long commands stop at the next step and keep what they finished.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An `Error::Interrupted` once Ctrl-C has been pressed.
fn check_interrupt(what_is_kept: &str) -> wgnorm::Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::Interrupted(what_is_kept.to_string()));
    }
    Ok(())
}

/// Where a command runs.
#[derive(Args)]
pub struct DeviceArgs {
    /// auto: a hardware GPU if there is one, else the CPU (software GPU adapters such as
    /// lavapipe only with --device gpu or --adapter).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Pick the adapter whose name contains this (case-insensitive); also WGNORM_ADAPTER.
    #[arg(long)]
    adapter: Option<String>,
}

/// Refuses `--adapter` beside `--device cpu`, where it would pick nothing.
fn refuse_adapter_on_cpu(cpu: bool, adapter: bool) -> wgnorm::Result<()> {
    if cpu && adapter {
        return Err(Error::InvalidArgument(
            "--adapter picks a GPU adapter; with --device cpu it has no effect (drop one of them)"
                .to_string(),
        ));
    }
    Ok(())
}

impl DeviceArgs {
    /// Checks the flags before a command starts its work.
    fn check(&self) -> wgnorm::Result<()> {
        refuse_adapter_on_cpu(self.device == DeviceChoice::Cpu, self.adapter.is_some())
    }

    fn open(&self) -> wgnorm::Result<Device> {
        Device::open(self.device, self.adapter.clone())
    }
}

/// Which dataset, where its files are, and where to fetch them from when they are not.
#[derive(Args)]
pub struct DataArgs {
    /// The images: handwritten digits, or Zalando's clothing in 10 classes.
    #[arg(long, value_enum, default_value_t = DatasetChoice::Mnist)]
    dataset: DatasetChoice,
    /// Folder of the dataset's four IDX files (.gz or raw) [default: data/mnist or
    /// data/fashion-mnist, downloaded into when files are missing]. A folder named here must
    /// hold them, unless --download.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Download missing files into --data-dir (the default folder is downloaded into without
    /// it).
    #[arg(long, requires = "data_dir")]
    download: bool,
    /// Base URL to download the dataset's .gz files from (repeatable) [default: public
    /// mirrors; also WGNORM_MNIST_MIRROR].
    #[arg(long)]
    mirror: Vec<String>,
}

/// `--dataset`: the library's `Dataset` carries no command-line derive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetChoice {
    Mnist,
    FashionMnist,
}

impl DatasetChoice {
    fn dataset(self) -> wgnorm::data::mnist::Dataset {
        match self {
            DatasetChoice::Mnist => wgnorm::data::mnist::Dataset::Mnist,
            DatasetChoice::FashionMnist => wgnorm::data::mnist::Dataset::FashionMnist,
        }
    }
}

impl DataArgs {
    /// The dataset chosen.
    fn dataset(&self) -> wgnorm::data::mnist::Dataset {
        self.dataset.dataset()
    }

    fn load(&self) -> wgnorm::Result<wgnorm::data::mnist::Mnist> {
        use wgnorm::data::mnist::MnistFile;
        let dataset = self.dataset();
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data").join(dataset.name()));
        if dir.exists() && !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "--data-dir {} is a file, not a folder",
                dir.display()
            )));
        }
        let downloads = self.data_dir.is_none() || self.download;
        if !downloads && !self.mirror.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--mirror has no effect: nothing is downloaded into --data-dir {} without \
                 --download",
                dir.display()
            )));
        }
        if !downloads {
            let missing: Vec<&str> = MnistFile::ALL
                .into_iter()
                .filter(|file| file.find(&dir).is_none())
                .map(MnistFile::stem)
                .collect();
            if !missing.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "--data-dir {} lacks {} (each also found as .gz, or named like \
                     train-images.idx3-ubyte); pass --download to fetch them there",
                    dir.display(),
                    missing.join(", ")
                )));
            }
        } else {
            // `ensure` fetches only what is missing.
            let mirrors: Vec<String> = if !self.mirror.is_empty() {
                self.mirror.clone()
            } else if let Ok(mirror) = std::env::var("WGNORM_MNIST_MIRROR") {
                vec![mirror]
            } else {
                wgnorm::data::download::mirrors(dataset)
                    .iter()
                    .map(|m| m.to_string())
                    .collect()
            };
            wgnorm::data::download::ensure(dataset, &dir, &mirrors)?;
        }
        wgnorm::data::mnist::load_dataset(dataset, &dir)
    }
}

/// Where work runs. `auto` takes a hardware GPU, else the CPU: a software GPU adapter (lavapipe,
/// SwiftShader, WARP) runs on the same CPU cores through a shader compiler, many times slower
/// than the CPU backend, so it is used only when asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Gpu,
    Cpu,
}

/// The backend a command runs on.
pub enum Device {
    Gpu(GpuBackend),
    Cpu(CpuBackend),
}

impl Device {
    /// Opens the device `choice` names and prints the run's first line: which device, and why.
    pub fn open(choice: DeviceChoice, adapter: Option<String>) -> wgnorm::Result<Self> {
        refuse_adapter_on_cpu(choice == DeviceChoice::Cpu, adapter.is_some())?;
        let request = AdapterRequest::from_flag_or_env(adapter);
        let (device, why) = match choice {
            DeviceChoice::Cpu => (Device::Cpu(CpuBackend), "--device cpu".to_string()),
            DeviceChoice::Gpu => (
                Device::Gpu(GpuBackend::new(&request)?),
                match &request.name {
                    Some(name) => format!("--device gpu, the adapter matching '{name}'"),
                    None => "--device gpu, the best adapter".to_string(),
                },
            ),
            DeviceChoice::Auto => auto(&request)?,
        };
        eprintln!("device: {} ({why})", device.name());
        Ok(device)
    }

    /// The adapter's name, or "cpu".
    pub fn name(&self) -> String {
        match self {
            Device::Gpu(gpu) => gpu.adapter().name.clone(),
            Device::Cpu(_) => "cpu".to_string(),
        }
    }
}

/// What `--device auto` runs on, and why.
fn auto(request: &AdapterRequest) -> wgnorm::Result<(Device, String)> {
    if let Some(name) = &request.name {
        let gpu = GpuBackend::new(request)?;
        return Ok((Device::Gpu(gpu), format!("the adapter matching '{name}'")));
    }
    // A WGPU_BACKEND that names no backend is the user's mistake to hear of, not a reason to
    // fall back to the CPU.
    if let Some(error) = device::unknown_backend_env() {
        return Err(error);
    }
    match device::auto_choice(&device::adapters(&device::instance())) {
        device::AutoChoice::Gpu => Ok((
            Device::Gpu(GpuBackend::new(request)?),
            "auto: the best hardware GPU".to_string(),
        )),
        device::AutoChoice::Cpu(why) => Ok((Device::Cpu(CpuBackend), format!("auto: {why}"))),
    }
}

/// `--dtype f32|f16`: the library's `Dtype` carries no command-line derive.
fn parse_dtype(value: &str) -> std::result::Result<wgnorm::Dtype, String> {
    match value {
        "f32" => Ok(wgnorm::Dtype::F32),
        "f16" => Ok(wgnorm::Dtype::F16),
        other => Err(format!("'{other}' is not a dtype: use f32 or f16")),
    }
}

/// `--shift brightness:D|contrast:F`.
fn parse_shift(value: &str) -> std::result::Result<wgnorm::data::shift::Shift, String> {
    value.parse().map_err(|e: Error| e.to_string())
}

fn exit_code(error: &Error) -> u8 {
    match error {
        Error::Rank { source, .. } => exit_code(source),
        Error::Interrupted(_) => 130,
        Error::Gpu(_) | Error::DeviceLost(_) | Error::Diverged(_) | Error::Json(_) => 1,
        _ => 2,
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Bare `wgnorm`: the whole help, which lists the commands.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // clap's message is its first paragraph ("missing" lists go on indented lines),
            // followed by its suggestions ("tip: a similar argument exists: '--epochs'").
            let rendered = e.render().to_string();
            let mut message: Vec<&str> = rendered
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            if message.is_empty() {
                message.push("bad arguments");
            }
            let tips: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("tip:"))
                .collect();
            let message = std::iter::once(message.join(" "))
                .chain(tips.iter().map(|tip| tip.to_string()))
                .collect::<Vec<_>>()
                .join("; ");
            eprintln!("{message} (see --help)");
            return ExitCode::from(2);
        }
    };
    // Without a handler (e.g. no signal support) Ctrl-C simply ends the process, as before.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed));
    // Under mpirun only `train` and the distributed bench run on every process; any other
    // command runs once, on rank 0, and the other processes end at once.
    if let Some((rank, world)) = data_parallel::mpirun_world()
        && world > 1
        && rank > 0
        && !matches!(&cli.command, Command::Train(_))
        && !matches!(&cli.command, Command::Bench(args) if args.on_every_rank())
    {
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Command::Devices => devices::run(),
        Command::Bn(args) => bn::run(*args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Predict(args) => predict::run(*args),
        Command::Recalibrate(args) => recalibrate::run(*args),
        Command::Inspect(args) => inspect::run(*args),
        Command::Export(args) => export::run(*args),
        Command::Compare(args) => compare::run(*args),
        Command::Sweep(args) => sweep::run(*args),
        Command::Bench(args) => bench::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One write, so that the lines of ranks sharing one stream (mpirun) never
            // interleave.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("error: {e}\n").as_bytes(),
            );
            ExitCode::from(exit_code(&e))
        }
    }
}
