//! The `wgnorm` command line. Every failure ends in one line on stderr and a non-zero exit:
//! 2 for bad flags and bad input, 1 for failures of the machine (GPU errors, device loss).

mod bn;
mod devices;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::Error;
use crate::cpu::CpuBackend;
use crate::gpu::{AdapterRequest, GpuBackend};

#[derive(Parser)]
#[command(
    name = "wgnorm",
    version,
    about = "BatchNorm and MLP training on any GPU through wgpu compute shaders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu can see, best first.
    Devices,
    /// Run BatchNorm (training-mode forward, and backward with --dy) on .npy tensors.
    Bn(Box<bn::BnArgs>),
}

/// Where work runs. `auto` takes the best GPU adapter and falls back to the CPU with a notice.
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
    pub fn open(choice: DeviceChoice, adapter: Option<String>) -> crate::Result<Self> {
        let request = AdapterRequest::from_flag_or_env(adapter);
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu(CpuBackend)),
            DeviceChoice::Gpu => Ok(Device::Gpu(GpuBackend::new(&request)?)),
            DeviceChoice::Auto => match GpuBackend::new(&request) {
                Ok(gpu) => Ok(Device::Gpu(gpu)),
                Err(Error::NoAdapter(reason)) if request.name.is_none() => {
                    eprintln!("notice: {reason}; running on the CPU");
                    Ok(Device::Cpu(CpuBackend))
                }
                Err(e) => Err(e),
            },
        }
    }
}

fn exit_code(error: &Error) -> u8 {
    match error {
        Error::Gpu(_) | Error::DeviceLost(_) => 1,
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
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            eprintln!("{} (see --help)", first.trim_end());
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Devices => devices::run(),
        Command::Bn(args) => bn::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
