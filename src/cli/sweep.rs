//! `wgnorm sweep`: one run per (model, learning rate, batch size), tabulated and plotted.

use std::path::PathBuf;

use clap::Args;

use super::experiment::{PlannedRun, check_fresh, run_all, write_text};
use super::run_args::{ModelChoice, RunArgs, RunModel};
use crate::plot::{self, Line, Panel};
use crate::report::RunResult;
use wgnorm::{Error, Result};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Batch sizes to train with (in place of --batch-size).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    batch_sizes: Vec<usize>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mlp-bn,mlp")]
    models: Vec<ModelChoice>,
    /// Learning rates to sweep as well (in place of --lr); plots a heat map.
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<f64>,
    /// Directory for sweep.json, sweep.md, sweep.png and each run's files.
    #[arg(long, default_value = "runs/sweep")]
    out: PathBuf,
}

pub fn run(args: SweepArgs) -> Result<()> {
    args.run.device.check()?;
    if args.batch_sizes.is_empty() || args.models.is_empty() {
        return Err(Error::InvalidArgument(
            "--batch-sizes and --models need at least one value".to_string(),
        ));
    }
    if args.run.batch_size.is_some() {
        return Err(Error::InvalidArgument(
            "sweep takes --batch-sizes (a comma-separated list), not --batch-size".to_string(),
        ));
    }
    if args.run.lr.is_some() && !args.lrs.is_empty() {
        return Err(Error::InvalidArgument(
            "--lr has no effect beside --lrs, which sweeps the learning rate (put every rate \
             in --lrs)"
                .to_string(),
        ));
    }
    let models: Vec<RunModel> = (args.models.iter())
        .map(|model| model.with_norm(args.run.norm))
        .collect::<Result<_>>()?;
    args.run
        .refuse_unused_batchnorm_flags(&models, "--models")?;
    check_fresh(&args.out, "sweep.json")?;
    let lrs: Vec<Option<f64>> = if args.lrs.is_empty() {
        vec![args.run.lr]
    } else {
        args.lrs.iter().copied().map(Some).collect()
    };
    let mut plan = Vec::new();
    for &model in &models {
        for &lr in &lrs {
            for &batch_size in &args.batch_sizes {
                let mut config = args.run.config(model)?;
                config.batch_size = batch_size;
                if let Some(lr) = lr {
                    config.optimizer = config.optimizer.with_lr(lr);
                }
                let dir = args.out.join(format!(
                    "{}-batch{batch_size}-lr{}-seed{}",
                    model.name(),
                    config.optimizer.lr(),
                    config.seed
                ));
                plan.push(PlannedRun { model, config, dir });
            }
        }
    }
    let heat = !args.lrs.is_empty();
    let models: Vec<String> = models.iter().map(|m| m.name()).collect();
    let out = args.out.clone();
    let mut save = |runs: &[RunResult]| -> Result<()> {
        let json = serde_json::json!({ "runs": runs });
        write_text(&out, "sweep.json", &serde_json::to_string_pretty(&json)?)?;
        write_text(&out, "sweep.md", &markdown(runs))?;
        let png = out.join("sweep.png");
        if heat {
            plot::heat_map(
                &png,
                "Test accuracy over batch size and learning rate",
                runs,
                &models,
            )
        } else {
            lines(&png, runs, &models)
        }
    };
    let runs = run_all(&args.run, plan, &mut save)?;
    println!("{}", markdown(&runs));
    Ok(())
}

fn percent(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{:.2}", v * 100.0))
}

/// One row per run; diverged runs say so.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut md = String::from(
        "# Batch-size sweep\n\n| model | batch | lr | val acc (%) | test acc (%) | val loss | \
         s/epoch | samples/s |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in runs {
        let last = r.last_epoch();
        if r.diverged.is_some() {
            md += &format!(
                "| {} | {} | {} | diverged | diverged | – | – | – |\n",
                r.model, r.batch_size, r.lr
            );
            continue;
        }
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.model,
            r.batch_size,
            r.lr,
            percent(last.and_then(|e| e.val_acc)),
            percent(r.test_acc),
            last.and_then(|e| e.val_loss)
                .map_or("–".to_string(), |v| format!("{v:.4}")),
            r.seconds_per_epoch
                .map_or("–".to_string(), |v| format!("{v:.2}")),
            r.samples_per_second
                .map_or("–".to_string(), |v| format!("{v:.0}")),
        );
    }
    md += "\nSeconds per epoch include the validation pass; samples/s is training images per \
           second of that time.\n";
    for r in runs {
        if let Some(reason) = &r.diverged {
            md += &format!(
                "\n- {} batch {} lr {} diverged: {reason}",
                r.model, r.batch_size, r.lr
            );
        }
    }
    md
}

/// Accuracy and time against batch size, one line per model.
fn lines(path: &std::path::Path, runs: &[RunResult], models: &[String]) -> Result<()> {
    type Pick = fn(&RunResult) -> Option<f64>;
    let panels: [(&str, &str, Pick); 4] = [
        ("validation accuracy", "accuracy", |r| {
            r.last_epoch().and_then(|e| e.val_acc)
        }),
        ("test accuracy", "accuracy", |r| r.test_acc),
        ("seconds per epoch", "seconds", |r| r.seconds_per_epoch),
        ("training samples per second", "samples/s", |r| {
            r.samples_per_second
        }),
    ];
    let panels: Vec<Panel> = panels
        .iter()
        .map(|&(title, y_label, pick)| Panel {
            title: title.to_string(),
            x_label: "batch size".to_string(),
            y_label: y_label.to_string(),
            log2_x: true,
            log10_y: false,
            lines: models
                .iter()
                .map(|model| Line {
                    label: model.clone(),
                    points: runs
                        .iter()
                        .filter(|r| &r.model == model)
                        .filter_map(|r| pick(r).map(|v| (r.batch_size as f64, v)))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    plot::panels(path, "MNIST MLP: batch-size sweep", &panels, 2)
}
