//! `wgnorm train`: a preset or `--arch` model on MNIST or Fashion-MNIST, trained as Keras' `fit`
//! would, with a progress bar, a line per epoch, metrics files, a checkpoint after every epoch
//! and optional early stopping.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::metrics::MetricsFile;
use super::models::ModelChoice;
use super::run_args::{RunArgs, refuse_unreachable_train_limit};
use wgnorm::backend::Dtype;
use wgnorm::checkpoint::{self, BEST_MODEL_FILE, F16_MODEL_FILE, MODEL_FILE, STATE_FILE};
use wgnorm::data::mnist::Mnist;
use wgnorm::data::write_atomically;
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
    run: RunArgs,
    /// Directory for metrics and checkpoints [default: runs/YYYYMMDD-HHMMSS, in UTC].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out after its last finished epoch.
    #[arg(long, requires = "out")]
    resume: bool,
    /// f16 also writes the finished model as model.f16.safetensors: half the size, values
    /// rounded to f16, loadable by PyTorch and `wgnorm eval`. Training is unchanged.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    export_dtype: Dtype,
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
    args.run.device.check()?;
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
    let out = args.out.clone().unwrap_or_else(default_out_dir);
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
    let data = args.run.data.load()?;
    refuse_unreachable_train_limit(&config, &data)?;
    match args.run.device.open()? {
        super::Device::Gpu(gpu) => {
            let adapter = gpu.adapter().name.clone();
            let place = RunPlace::new(&adapter, &out, args.resume);
            run_on(&gpu, "gpu", &place, config, &data, &MultiProgress::new())?;
        }
        super::Device::Cpu(cpu) => {
            let place = RunPlace::new("cpu", &out, args.resume);
            run_on(&cpu, "cpu", &place, config, &data, &MultiProgress::new())?;
        }
    }
    if args.export_dtype == Dtype::F16 {
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
}

impl<'a> RunPlace<'a> {
    pub fn new(adapter: &'a str, out: &'a Path, resume: bool) -> Self {
        Self {
            adapter,
            out,
            resume,
        }
    }
}

/// Trains (or resumes) one run into `place.out`, with its epoch bar under `multi`, and
/// evaluates it on the test set.
pub fn run_on<B: Compute>(
    backend: &B,
    device: &str,
    place: &RunPlace,
    config: TrainConfig,
    data: &Mnist,
    multi: &MultiProgress,
) -> Result<RunOutcome> {
    let (adapter, out, resume) = (place.adapter, place.out, place.resume);
    let config = TrainConfig {
        activations: super::storage_or_f32(backend, config.activations, "training"),
        ..config
    };
    // The CPU holds parameters, gradients and optimizer state; for the GPU, the initial weights.
    let host_copies = match device {
        "cpu" => 2 + config.optimizer.state_names().len() as u64,
        _ => 1,
    };
    check_host_memory(&config.spec, host_copies)?;
    if out.exists() && !out.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--out {} is a file, not a folder",
            out.display()
        )));
    }
    let mut trainer = if resume {
        Trainer::resume(backend, config, data, out).map_err(|e| match e {
            Error::InvalidArgument(message) => Error::InvalidArgument(format!(
                "--resume: {message}; pass the flags the run was started with"
            )),
            other => other,
        })?
    } else {
        Trainer::new(backend, config, data)?
    };
    // Made once the run is known to start, so that a refused run leaves no folder behind.
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let config = trainer.config.clone();
    multi.suspend(|| {
        eprintln!(
            "training {} on {adapter}: {} training images, {} steps per epoch, writing to {}",
            config.spec.describe(),
            trainer.train_rows(),
            trainer.steps_per_epoch(),
            out.display()
        )
    });
    let metrics = MetricsFile {
        dataset: data.dataset.name(),
        device,
        adapter,
        config: &config,
    };
    if trainer.epochs_done > 0 {
        multi.suspend(|| eprintln!("resuming after epoch {}", trainer.epochs_done));
    }
    while trainer.epochs_done < config.epochs {
        if let Some(patience) = config.patience
            && let EarlyStop {
                best: Some((best, _)),
                stop: true,
            } = EarlyStop::of(&trainer.history, patience)
        {
            multi.suspend(|| {
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
        let bar = progress_bar(multi, trainer.steps_per_epoch(), epoch, config.epochs);
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
        multi.suspend(|| println!("{}", epoch_line(&record, config.epochs)));
        trainer.save(out).map_err(lost_in_epoch)?;
        if let Some(patience) = config.patience
            && EarlyStop::of(&trainer.history, patience)
                .best
                .map(|(e, _)| e)
                == Some(epoch)
        {
            keep_as_best(out)?;
        }
        metrics.write(out, &trainer.history, None, None)?;
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
    multi.suspend(|| {
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
    metrics.write(out, &trainer.history, Some(test), test_batch_stats)?;
    Ok(RunOutcome {
        history: trainer.history,
        test,
        test_batch_stats,
    })
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
    format!(
        "epoch {}/{epochs}  train loss {:.4} acc {:.4}{validation}  {:.1} s (training {:.1} s)",
        record.epoch, record.train_loss, record.train_acc, record.seconds, record.training_seconds
    )
}
