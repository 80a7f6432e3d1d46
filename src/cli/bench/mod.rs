//! `wgnorm bench`: BatchNorm kernels and training steps on the GPU and the CPU, side by side,
//! as a printed table, `--json` and a `--plot` of time per step against batch size.

use std::path::{Path, PathBuf};

use serde::Serialize;

mod args;
mod distributed;
mod suites;

pub use args::BenchArgs;
use args::{BenchDevices, Suite};

use super::models::ModelChoice;
use crate::plot::{self, Line, Panel};
use suites::{kernels, train};
use wgnorm::bench::{self, BatchNormPass, EpochTiming, KernelTiming, STEPS_PER_SAMPLE, Timing};
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::graph::ModelSpec;
use wgnorm::train::TrainConfig;
use wgnorm::{Error, Result};

/// What the measurements ran on.
#[derive(Serialize)]
struct Machine {
    gpu: Option<String>,
    gpu_timestamps: bool,
    cpu: String,
    cpu_threads_available: usize,
    cpu_backend_threads: usize,
}

/// The two bandwidths of a device that kernels are judged against, bytes read plus written
/// per second over buffers of `bytes`.
#[derive(Clone, Copy, Serialize)]
struct Ceiling {
    bytes: usize,
    copy_bytes_per_second: f64,
    stream_bytes_per_second: f64,
}

#[derive(Serialize)]
struct CeilingRow {
    device: &'static str,
    #[serde(flatten)]
    ceiling: Ceiling,
}

#[derive(Serialize)]
struct KernelRow {
    shape: String,
    pass: BatchNormPass,
    device: &'static str,
    timing: KernelTiming,
    bytes: usize,
    /// Bytes over the device time where measured, else over the wall time.
    bytes_per_second: f64,
    /// That rate over the device's copy and streaming bandwidths.
    of_copy: f64,
    of_stream: f64,
    /// This row's wall time over the CPU's, on GPU rows.
    gpu_over_cpu: Option<f64>,
}

#[derive(Serialize)]
struct StepRow {
    model: &'static str,
    batch: usize,
    device: &'static str,
    seconds_per_step: Timing,
    /// Per step once warm (GPU): dispatches, submissions, bind groups and buffers created.
    objects: Option<bench::StepObjects>,
    samples_per_second: f64,
    flops_per_second: f64,
    gpu_over_cpu: Option<f64>,
}

/// One matrix product of a step, timed alone.
#[derive(Serialize)]
struct ProductRow {
    model: &'static str,
    batch: usize,
    #[serde(flatten)]
    product: bench::StepProduct,
    /// m×k×n.
    shape: String,
    device: &'static str,
    /// The GPU kernel that ran it (`matmul.matmul_vec4`; with `+ reduce` where k was split).
    kernel: Option<String>,
    timing: bench::ProductTiming,
    flops: f64,
    /// FLOPs over the device time where measured, else over the wall time.
    flops_per_second: f64,
}

/// Where a GPU step's device time goes, kernel by kernel.
#[derive(Serialize)]
struct StepKernelsRow {
    model: &'static str,
    batch: usize,
    kernels: Vec<bench::KernelShare>,
}

#[derive(Serialize)]
struct OnceRow<T> {
    model: &'static str,
    device: &'static str,
    result: T,
}

#[derive(Serialize, Default)]
struct Report {
    machine: Option<Machine>,
    ceilings: Vec<CeilingRow>,
    kernels: Vec<KernelRow>,
    byte_models: Vec<(BatchNormPass, &'static str)>,
    train_steps: Vec<StepRow>,
    steps_per_sample: usize,
    step_kernels: Vec<StepKernelsRow>,
    matmul_products: Vec<ProductRow>,
    first_step_seconds: Vec<OnceRow<f64>>,
    reference_epoch: Vec<OnceRow<EpochTiming>>,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn refuse_existing(path: &Option<PathBuf>) -> Result<()> {
    match path {
        Some(path) if path.exists() => Err(Error::InvalidArgument(format!(
            "{} already exists; remove it or choose another path",
            path.display()
        ))),
        _ => Ok(()),
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.3}", seconds * 1e3)
}

pub fn run(args: BenchArgs) -> Result<()> {
    args.refuse_unused_flags()?;
    if args.suite == Suite::Distributed {
        return distributed::run(&args);
    }
    if args.reps == 0 {
        return Err(Error::InvalidArgument(
            "--reps must be at least 1".to_string(),
        ));
    }
    if let Some(&bad) = args
        .batch_sizes()
        .iter()
        .find(|&&b| !(2..=bench::SYNTHETIC_IMAGES).contains(&b))
    {
        return Err(Error::InvalidArgument(format!(
            "--batch-sizes: {bad} is outside 2..={} (BatchNorm needs 2 rows; steps draw from {} \
             synthetic images)",
            bench::SYNTHETIC_IMAGES,
            bench::SYNTHETIC_IMAGES
        )));
    }
    refuse_existing(&args.json)?;
    refuse_existing(&args.plot)?;
    let gpu = match args.device {
        BenchDevices::Cpu => None,
        BenchDevices::Gpu => Some(GpuBackend::new(&AdapterRequest::from_flag_or_env(
            args.adapter.clone(),
        ))?),
        BenchDevices::Both => {
            match GpuBackend::new(&AdapterRequest::from_flag_or_env(args.adapter.clone())) {
                Ok(gpu) => Some(gpu),
                Err(Error::NoAdapter(reason)) if args.adapter.is_none() => {
                    eprintln!("notice: {reason}; benchmarking the CPU only");
                    None
                }
                Err(e) => Err(e)?,
            }
        }
    };
    let cpu = (args.device != BenchDevices::Gpu).then_some(CpuBackend);
    let machine = Machine {
        gpu: gpu.as_ref().map(|g| g.adapter().to_string()),
        gpu_timestamps: gpu.as_ref().is_some_and(GpuBackend::has_timestamps),
        cpu: cpu_name(),
        cpu_threads_available: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_backend_threads: 1,
    };
    println!(
        "GPU: {}{}",
        machine.gpu.as_deref().unwrap_or("none"),
        if gpu.is_some() && !machine.gpu_timestamps {
            " (no timestamp queries: wall time only)"
        } else {
            ""
        }
    );
    println!(
        "CPU: {}, {} threads available; wgnorm's CPU backend runs on {} thread",
        machine.cpu, machine.cpu_threads_available, machine.cpu_backend_threads
    );
    let mut report = Report {
        machine: Some(machine),
        steps_per_sample: STEPS_PER_SAMPLE,
        ..Report::default()
    };
    let result = measure(&args, gpu.as_ref(), cpu.as_ref(), &mut report);
    // What was measured is written even when a later measurement failed or was interrupted.
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::InvalidArgument(format!("could not encode the report: {e}")))?;
        wgnorm::data::write_atomically(path, |file| {
            use std::io::Write;
            file.write_all(text.as_bytes())
        })?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot
        && !report.train_steps.is_empty()
    {
        draw(path, &args.models(), &report)?;
        println!("wrote {}", path.display());
    }
    result
}

fn measure(
    args: &BenchArgs,
    gpu: Option<&GpuBackend>,
    cpu: Option<&CpuBackend>,
    report: &mut Report,
) -> Result<()> {
    if args.suite != Suite::Train {
        kernels(args, gpu, cpu, report)?;
    }
    if args.suite != Suite::Kernels {
        train(args, gpu, cpu, report)?;
    }
    Ok(())
}

/// Bytes of the copy that measures bandwidth: large enough to leave the caches.
const COPY_BYTES: usize = 64 << 20;

/// Runs one measurement on each device present (checking for Ctrl-C before each), GPU first.
/// The two closures do the same thing; they are two because the backends are two types.
fn per_device<T>(
    gpu: Option<&GpuBackend>,
    cpu: Option<&CpuBackend>,
    on_gpu: impl FnOnce(&GpuBackend) -> Result<T>,
    on_cpu: impl FnOnce(&CpuBackend) -> Result<T>,
) -> Result<Vec<(&'static str, T)>> {
    let mut rows = Vec::new();
    if let Some(gpu) = gpu {
        super::check_interrupt("the measurements so far")?;
        rows.push(("gpu", on_gpu(gpu)?));
    }
    if let Some(cpu) = cpu {
        super::check_interrupt("the measurements so far")?;
        rows.push(("cpu", on_cpu(cpu)?));
    }
    Ok(rows)
}

/// On the GPU row, its time over the CPU row's (when both devices were measured).
fn gpu_over_cpu<T>(rows: &[(&str, T)], device: &str, seconds: impl Fn(&T) -> f64) -> Option<f64> {
    let of = |wanted: &str| {
        rows.iter()
            .find(|(d, _)| *d == wanted)
            .map(|(_, t)| seconds(t))
    };
    match (device, of("gpu"), of("cpu")) {
        ("gpu", Some(gpu), Some(cpu)) => Some(gpu / cpu),
        _ => None,
    }
}

fn draw(path: &Path, models: &[ModelChoice], report: &Report) -> Result<()> {
    let mut lines = Vec::new();
    for device in ["gpu", "cpu"] {
        for model in models.iter().map(|m| m.name()) {
            let points: Vec<(f64, f64)> = report
                .train_steps
                .iter()
                .filter(|r| r.device == device && r.model == model)
                .map(|r| (r.batch as f64, r.seconds_per_step.median * 1e3))
                .collect();
            if !points.is_empty() {
                lines.push(Line {
                    label: format!("{device} {model}"),
                    points,
                });
            }
        }
    }
    let title = match report.machine.as_ref().and_then(|m| m.gpu.as_deref()) {
        Some(gpu) => format!(
            "Time per training step — GPU {} and CPU",
            gpu.split(" (").next().unwrap_or(gpu)
        ),
        None => "Time per training step — CPU".to_string(),
    };
    plot::panels(
        path,
        &title,
        &[Panel {
            title: "MNIST, Adam".to_string(),
            x_label: "batch size".to_string(),
            y_label: "ms per step (log scale)".to_string(),
            lines,
            log2_x: true,
            log10_y: true,
        }],
        1,
    )
}
