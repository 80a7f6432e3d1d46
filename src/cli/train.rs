//! `wgnorm train`: a preset or `--arch` model on MNIST or Fashion-MNIST, trained as Keras' `fit`
//! would, with a progress bar, a line per epoch, metrics files, a checkpoint after every epoch
//! and optional early stopping.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::data_parallel::{self, GroupRun, RankDevice};
use super::metrics::MetricsFile;
use super::models::ModelChoice;
use super::run_args::{RunArgs, refuse_unreachable_train_limit};
use wgnorm::backend::Dtype;
use wgnorm::checkpoint::{self, BEST_MODEL_FILE, F16_MODEL_FILE, MODEL_FILE, STATE_FILE};
use wgnorm::data::mnist::Mnist;
use wgnorm::data::write_atomically;
use wgnorm::distributed;
use wgnorm::graph::{Compute, ModelSpec};
use wgnorm::ops::loss::LossTotals;
use wgnorm::train::{EarlyStop, EpochRecord, TrainConfig, Trainer};
use wgnorm::{Error, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// A preset architecture; bn and nobn name mlp-bn and mlp [default: mlp-bn; mlp with
    /// --norm].
    #[arg(long, value_enum)]
    model: Option<ModelChoice>,
    /// Any other stack, one comma-separated token per layer, in place of --model: fc<N>,
    /// conv<C>k<K>[s<S>][p<P>], bn, ln, gn<G>, in, relu, dropout<P>, maxpool<K>[s<S>],
    /// avgpool, flatten, and residual blocks res(<layers>), res<C>[s<S>](<layers>) (a projected
    /// shortcut) or res(<layers>|<layers>) (e.g. conv16k3p1,bn,relu,maxpool2,flatten,fc10).
    #[arg(long, conflicts_with = "model")]
    arch: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Directory for metrics and checkpoints [default: runs/YYYYMMDD-HHMMSS, in UTC].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out after its last finished epoch.
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// f16 also writes the finished model as model.f16.safetensors: half the size, values
    /// rounded to f16, loadable by PyTorch and `wgnorm eval`. Training is unchanged.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    export_dtype: Dtype,
    /// Data-parallel training on several devices of this machine, one rank (and thread) each:
    /// cpu, or an adapter's number in `wgnorm devices`, comma-separated (e.g. 0,1 or cpu,cpu).
    /// --batch-size stays per device; each step trains on a global batch of --batch-size ×
    /// devices.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["device", "adapter"])]
    pub devices: Option<Vec<String>>,
    /// With several devices (or under mpirun), BatchNorm normalizes each device's slice by its
    /// own statistics instead of the whole global batch's (synchronized BatchNorm, the
    /// default).
    #[arg(long)]
    pub no_sync_bn: bool,
}

/// `runs/<UTC time>`, e.g. runs/20261122-063012.
fn default_out_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

pub fn run(args: TrainArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let lead = if data_parallel::under_mpirun() {
        data_parallel::run_mpi(&args, &out)?
    } else {
        match settle(&args, false)? {
            (config, Some(devices)) => data_parallel::run_devices(&args, config, &out, &devices)?,
            (config, None) => {
                check_out(&args, &out)?;
                let data = args.run.data.load()?;
                refuse_unreachable_train_limit(&config, &data)?;
                let device = args.run.device.open()?;
                let name = device.name();
                let place = RunPlace::new(&name, &out, args.resume);
                run_on_device(&device, &place, config, &data, &MultiProgress::new())?;
                true
            }
        }
    };
    if lead && args.export_dtype == Dtype::F16 {
        let finished = checkpoint::load_model(&out.join(MODEL_FILE))?;
        let target = out.join(F16_MODEL_FILE);
        checkpoint::save_model(
            &target,
            &finished.spec,
            &finished.model,
            finished.epochs_done,
            Dtype::F16,
        )?;
        println!("f16 model: {}", target.display());
    }
    Ok(())
}

/// The run's configuration, and the devices of `--devices`, from the flags alone.
pub fn settle(
    args: &TrainArgs,
    under_mpirun: bool,
) -> Result<(TrainConfig, Option<Vec<RankDevice>>)> {
    args.run.device.check()?;
    let config = run_config(args)?;
    let devices = data_parallel::devices_of(args, &config, under_mpirun)?;
    Ok((config, devices))
}

/// `run_on` on whichever backend `device` is.
pub fn run_on_device(
    device: &super::Device,
    place: &RunPlace,
    config: TrainConfig,
    data: &Mnist,
    multi: &MultiProgress,
) -> Result<RunOutcome> {
    match device {
        super::Device::Gpu(gpu) => run_on(gpu, "gpu", place, config, data, multi),
        super::Device::Cpu(cpu) => run_on(cpu, "cpu", place, config, data, multi),
    }
}

/// The run's configuration from the flags.
fn run_config(args: &TrainArgs) -> Result<TrainConfig> {
    let config = match &args.arch {
        Some(arch) => args.run.config_for_arch(arch)?,
        None => {
            let model = (args.model)
                .unwrap_or(ModelChoice::default_for(args.run.norm))
                .with_norm(args.run.norm)?;
            (args.run).refuse_unused_batchnorm_flags(&[model], "--model")?;
            args.run.config(model)?
        }
    };
    config.validate()?;
    Ok(config)
}

/// Refuses `--resume` where `out` holds no run, and a fresh run where it holds one.
pub fn check_out(args: &TrainArgs, out: &Path) -> Result<()> {
    let saved = out.join(MODEL_FILE).exists() || out.join(STATE_FILE).exists();
    if args.resume && !saved {
        return Err(Error::InvalidArgument(format!(
            "--resume: {} holds no run to continue ({MODEL_FILE} and {STATE_FILE} missing)",
            out.display()
        )));
    }
    if !args.resume && saved {
        return Err(Error::InvalidArgument(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    Ok(())
}

/// What a finished run measured.
pub struct RunOutcome {
    pub history: Vec<EpochRecord>,
    pub test: LossTotals,
    /// With BatchNorm, the test totals with each batch's own statistics.
    pub test_batch_stats: Option<LossTotals>,
}

/// Where a run's files go and what it runs on, for humans and metrics.
pub struct RunPlace<'a> {
    pub adapter: &'a str,
    pub out: &'a Path,
    pub resume: bool,
    /// The data-parallel group the run is one rank of, if any.
    pub group: Option<&'a GroupRun>,
}

impl<'a> RunPlace<'a> {
    pub fn new(adapter: &'a str, out: &'a Path, resume: bool) -> Self {
        Self {
            adapter,
            out,
            resume,
            group: None,
        }
    }
}

/// Trains (or resumes) one run into `place.out`, with its epoch bar under `multi`, and
/// evaluates it on the test set. On a rank of a group, every rank calls it; rank 0 alone
/// prints and writes, and a failure on any rank ends every rank with the same error.
pub fn run_on<B: Compute>(
    backend: &B,
    device: &str,
    place: &RunPlace,
    config: TrainConfig,
    data: &Mnist,
    multi: &MultiProgress,
) -> Result<RunOutcome> {
    let (adapter, out, resume) = (place.adapter, place.out, place.resume);
    let lead = place.group.is_none_or(GroupRun::is_lead);
    // What every rank decides for itself, then agrees on.
    let agree = |outcome: Result<()>| match place.group {
        Some(run) => distributed::agree(&*run.group, outcome),
        None => outcome,
    };
    let config = TrainConfig {
        activations: super::storage_or_f32(backend, config.activations, "training"),
        ..config
    };
    // The CPU holds parameters, gradients and optimizer state; for the GPU, the initial weights.
    let host_copies = match device {
        "cpu" => 2 + config.optimizer.state_names().len() as u64,
        _ => 1,
    };
    agree(check_host_memory(&config.spec, host_copies).and_then(|()| check_out_folder(out)))?;
    let mut trainer = start(backend, config, data, place).map_err(|e| match e {
        Error::InvalidArgument(message) if resume => Error::InvalidArgument(format!(
            "--resume: {message}; pass the flags the run was started with"
        )),
        other => other,
    })?;
    // Made once the run is known to start, so that a refused run leaves no folder behind.
    agree(match lead {
        true => std::fs::create_dir_all(out).map_err(|source| Error::Io {
            path: out.to_path_buf(),
            source,
        }),
        false => Ok(()),
    })?;
    let say = |line: &dyn Fn()| {
        if lead {
            multi.suspend(line)
        }
    };
    let config = trainer.config.clone();
    say(&|| {
        eprintln!(
            "training {} on {adapter}: {} training images, {} steps per epoch, writing to {}",
            config.spec.describe(),
            trainer.train_rows(),
            trainer.steps_per_epoch(),
            out.display()
        );
        if let Some(run) = place.group {
            eprintln!("{}", run.describe(&trainer));
        }
    });
    let metrics = MetricsFile {
        dataset: data.dataset.name(),
        device,
        adapter,
        config: &config,
    };
    if trainer.epochs_done > 0 {
        say(&|| eprintln!("resuming after epoch {}", trainer.epochs_done));
    }
    while trainer.epochs_done < config.epochs {
        if let Some(patience) = config.patience
            && let EarlyStop {
                best: Some((best, _)),
                stop: true,
            } = EarlyStop::of(&trainer.history, patience)
        {
            say(&|| {
                println!(
                    "early stop after epoch {}: no lower validation loss in {patience} epochs \
                     since epoch {best}, whose model is {}",
                    trainer.epochs_done,
                    out.join(BEST_MODEL_FILE).display()
                )
            });
            break;
        }
        let epoch = trainer.epochs_done + 1;
        let kept = match trainer.epochs_done {
            0 => "no epoch had finished, so nothing was saved".to_string(),
            done => format!(
                "{} holds epoch {done}; continue with --resume",
                out.display()
            ),
        };
        let bar = match lead {
            true => progress_bar(multi, trainer.steps_per_epoch(), epoch, config.epochs),
            false => ProgressBar::hidden(),
        };
        let record = trainer.train_epoch(&mut |done, totals| {
            bar.set_position(done as u64);
            if let Some(t) = totals {
                bar.set_message(format!("loss {:.4} acc {:.4}", t.mean_loss(), t.accuracy()));
            }
            super::check_interrupt(&kept)
        });
        bar.finish_and_clear();
        let lost_in_epoch = |error| match error {
            Error::DeviceLost(reason) => {
                Error::DeviceLost(format!("{reason}, in epoch {epoch}; {kept}"))
            }
            other => other,
        };
        let record = record.map_err(lost_in_epoch)?;
        say(&|| println!("{}", epoch_line(&record, config.epochs)));
        let best = config.patience.is_some_and(|patience| {
            EarlyStop::of(&trainer.history, patience)
                .best
                .map(|(e, _)| e)
                == Some(epoch)
        });
        let saved = match lead {
            true => (trainer.save(out).map_err(lost_in_epoch))
                .and_then(|()| if best { keep_as_best(out) } else { Ok(()) })
                .and_then(|()| metrics.write(out, &trainer.history, None, None)),
            false => Ok(()),
        };
        agree(saved)?;
    }
    let test = trainer.test()?;
    if !test.loss_sum.is_finite() {
        return Err(Error::Diverged(format!(
            "the test loss is {}; the model in {} diverged",
            test.loss_sum,
            out.display()
        )));
    }
    let test_batch_stats = trainer.test_with_batch_statistics()?;
    say(&|| {
        println!(
            "test loss {:.4} acc {:.4} ({} images)",
            test.mean_loss(),
            test.accuracy(),
            test.samples
        );
        if let Some(stats) = test_batch_stats {
            println!(
                "test acc {:.4} with BatchNorm's statistics over {} instead of the running ones",
                stats.accuracy(),
                wgnorm::train::batch_statistics_over(
                    &trainer.config.spec,
                    trainer.config.batch_size
                )
            );
        }
    });
    let written = match lead {
        true => metrics.write(out, &trainer.history, Some(test), test_batch_stats),
        false => Ok(()),
    };
    agree(written)?;
    Ok(RunOutcome {
        history: trainer.history,
        test,
        test_batch_stats,
    })
}

/// The trainer of a fresh or resumed run, on one device or as a rank of `place.group`.
fn start<'b, B: Compute>(
    backend: &'b B,
    config: TrainConfig,
    data: &Mnist,
    place: &RunPlace,
) -> Result<Trainer<'b, B>> {
    let (out, resume) = (place.out, place.resume);
    match (place.group, resume) {
        (None, true) => Trainer::resume(backend, config, data, out),
        (None, false) => Trainer::new(backend, config, data),
        (Some(run), true) => {
            Trainer::resume_in_group(backend, config, data, out, run.group.clone(), run.sync_bn)
        }
        (Some(run), false) => {
            let mut trainer = distributed::agree(&*run.group, Trainer::new(backend, config, data))?;
            trainer.join(run.group.clone(), run.sync_bn)?;
            Ok(trainer)
        }
    }
}

fn check_out_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--out {} is a file, not a folder",
            out.display()
        )));
    }
    Ok(())
}

/// Copies the model just saved to `best.safetensors`, whole or not at all.
fn keep_as_best(out: &Path) -> Result<()> {
    let (model, best) = (out.join(MODEL_FILE), out.join(BEST_MODEL_FILE));
    write_atomically(&best, |file| {
        std::io::copy(&mut std::fs::File::open(&model)?, file).map(|_| ())
    })
}

/// Refuses, before allocating, a model whose `copies` of its parameters would not fit in the
/// memory the OS says is available: an allocation failure would abort the process.
fn check_host_memory(spec: &ModelSpec, copies: u64) -> Result<()> {
    let Some(available) = wgnorm::host_memory::available() else {
        return Ok(());
    };
    let needed = spec.param_count() * std::mem::size_of::<f32>() as u64 * copies;
    if needed > available {
        let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
        return Err(Error::Limit(format!(
            "{} parameters need {:.1} GiB of host memory ({copies} copies of the weights), but \
             {:.1} GiB is available; choose smaller --hidden widths",
            spec.param_count(),
            gib(needed),
            gib(available)
        )));
    }
    Ok(())
}

/// An epoch's bar under `multi`, so that an experiment's overall bar and this epoch's bar draw
/// together. It joins `multi` before it is styled: styling draws, and a bar drawn before it
/// joins draws straight to the terminal, a line that nothing clears.
fn progress_bar(multi: &MultiProgress, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(steps as u64));
    let style = ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

fn epoch_line(record: &EpochRecord, epochs: usize) -> String {
    let validation = match (record.val_loss, record.val_acc) {
        (Some(loss), Some(acc)) => format!("  val loss {loss:.4} acc {acc:.4}"),
        _ => String::new(),
    };
    let exchange = match record.exchange_seconds {
        Some(seconds) => format!(", {seconds:.1} s of it exchanging"),
        None => String::new(),
    };
    format!(
        "epoch {}/{epochs}  train loss {:.4} acc {:.4}{validation}  {:.1} s (training {:.1} \
         s{exchange})",
        record.epoch, record.train_loss, record.train_acc, record.seconds, record.training_seconds
    )
}
