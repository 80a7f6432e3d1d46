//! Running a planned list of training runs for `compare` and `sweep`: one device and one data
//! load for all of them, a bar for the whole experiment above each run's epoch bar, diverged runs
//! recorded as such, and the results saved after every run so Ctrl-C keeps what finished.

use std::path::{Path, PathBuf};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::Device;
use super::models::RunModel;
use super::run_args::{RunArgs, refuse_unreachable_train_limit};
use super::train::{RunOutcome, RunPlace, run_on};
use crate::report::RunResult;
use wgnorm::data::mnist::Mnist;
use wgnorm::graph::Compute;
use wgnorm::train::TrainConfig;
use wgnorm::{Error, Result};

/// One run of an experiment, with the directory its own metrics and checkpoints go to.
pub struct PlannedRun {
    pub model: RunModel,
    pub config: TrainConfig,
    pub dir: PathBuf,
}

/// Refuses an output directory that already holds this experiment's results.
pub fn check_fresh(out: &Path, results_file: &str) -> Result<()> {
    if out.join(results_file).exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already holds {results_file}; choose another --out",
            out.display()
        )));
    }
    if out.exists() && !out.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--out {} is a file, not a folder",
            out.display()
        )));
    }
    Ok(())
}

/// Runs `plan` in order; `save` gets every result so far after each run.
pub fn run_all(
    args: &RunArgs,
    plan: Vec<PlannedRun>,
    save: &mut dyn FnMut(&[RunResult]) -> Result<()>,
) -> Result<Vec<RunResult>> {
    for run in &plan {
        run.config.validate()?;
    }
    let data = args.data.load()?;
    for run in &plan {
        refuse_unreachable_train_limit(&run.config, &data)?;
    }
    match args.device.open()? {
        Device::Gpu(gpu) => {
            let adapter = gpu.adapter().name.clone();
            run_planned(&gpu, "gpu", &adapter, &data, plan, save)
        }
        Device::Cpu(cpu) => run_planned(&cpu, "cpu", "cpu", &data, plan, save),
    }
}

fn run_planned<B: Compute>(
    backend: &B,
    device: &str,
    adapter: &str,
    data: &Mnist,
    plan: Vec<PlannedRun>,
    save: &mut dyn FnMut(&[RunResult]) -> Result<()>,
) -> Result<Vec<RunResult>> {
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(plan.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("runs {bar:30} {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for run in plan {
        let name = run.model.name();
        overall.set_message(format!(
            "{name}, batch {}, lr {}, seed {}",
            run.config.batch_size,
            run.config.optimizer.lr(),
            run.config.seed
        ));
        let train_rows = run.config.training_images(data.train.len())?;
        let place = RunPlace::new(adapter, &run.dir, false);
        let outcome = run_on(backend, device, &place, run.config.clone(), data, &multi);
        let result = match outcome {
            Ok(outcome) => finished(&name, &run.config, train_rows, outcome),
            Err(Error::Diverged(reason)) => {
                multi.suspend(|| eprintln!("{name} diverged: {reason}"));
                RunResult {
                    model: name,
                    seed: run.config.seed,
                    batch_size: run.config.batch_size,
                    lr: run.config.optimizer.lr(),
                    epochs: Vec::new(),
                    test_loss: None,
                    test_acc: None,
                    test_acc_batch_stats: None,
                    diverged: Some(reason),
                    seconds_per_epoch: None,
                    samples_per_second: None,
                }
            }
            Err(Error::Interrupted(_)) => {
                overall.abandon();
                save(&results)?;
                return Err(Error::Interrupted(format!(
                    "the {} finished runs are saved",
                    results.len()
                )));
            }
            Err(e) => return Err(e),
        };
        results.push(result);
        save(&results)?;
        overall.inc(1);
    }
    overall.finish_and_clear();
    Ok(results)
}

fn finished(name: &str, config: &TrainConfig, train_rows: usize, outcome: RunOutcome) -> RunResult {
    let epochs = outcome.history.len().max(1) as f64;
    let seconds = outcome.history.iter().map(|e| e.seconds).sum::<f64>() / epochs;
    RunResult {
        model: name.to_string(),
        seed: config.seed,
        batch_size: config.batch_size,
        lr: config.optimizer.lr(),
        epochs: outcome.history,
        test_loss: Some(outcome.test.mean_loss()),
        test_acc: Some(outcome.test.accuracy()),
        test_acc_batch_stats: outcome.test_batch_stats.map(|t| t.accuracy()),
        diverged: None,
        seconds_per_epoch: Some(seconds),
        samples_per_second: Some(train_rows as f64 / seconds),
    }
}

/// Writes `text` to `out/name` atomically.
pub fn write_text(out: &Path, name: &str, text: &str) -> Result<()> {
    wgnorm::data::write_atomically(&out.join(name), |file| {
        use std::io::Write;
        file.write_all(text.as_bytes())
    })
}
