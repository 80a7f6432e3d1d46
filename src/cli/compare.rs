//! `wgnorm compare`: a model family without and with BatchNorm (`mlp` and `mlp-bn`, `cnn` and
//! `cnn-bn`, or a ResNet without and with its BatchNorms), or with each normalization of `--norms`, under the same protocol, seeds and
//! data, side by side, with mean ± standard deviation over `--repeats` seeds, a reading of each
//! model against the first, and learning curves.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::experiment::{PlannedRun, check_fresh, run_all, write_text};
use super::models::{RunModel, parse_norm};
use super::run_args::RunArgs;
use crate::plot::{self, Line, Panel};
use crate::report::{RunResult, first_epoch_reaching, read_difference, summarize};
use wgnorm::Result;
use wgnorm::graph::{Norm, Preset};

/// The validation accuracy whose first epoch `compare` reports ("epochs to 97%").
pub const TARGET_VAL_ACC: f64 = 0.97;

#[derive(Args)]
pub struct CompareArgs {
    /// The models compared: mlp and mlp-bn, cnn and cnn-bn, or a resnet without (resnet8-none)
    /// and with BatchNorm (resnet8).
    #[arg(long, value_enum, default_value_t = Family::Mlp)]
    family: Family,
    /// The family with each of these normalizations instead, comma-separated (bn, ln, gn<G>,
    /// in, none; e.g. bn,ln,gn8,none); each is read against the first.
    #[arg(long, value_delimiter = ',', value_parser = parse_norm)]
    norms: Option<Vec<Norm>>,
    #[command(flatten)]
    run: RunArgs,
    /// Seeds per model: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    repeats: u64,
    /// Directory for compare.json, compare.md, curves.png and each run's files.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Family {
    Mlp,
    Cnn,
    Resnet8,
    Resnet20,
    Resnet56,
}

impl Family {
    /// The family's model with each of `norms`, or without and with BatchNorm.
    fn models(self, norms: Option<&[Norm]>) -> Vec<RunModel> {
        let base = match self {
            Family::Mlp => Preset::Mlp,
            Family::Cnn => Preset::Cnn,
            Family::Resnet8 => Preset::ResNet8,
            Family::Resnet20 => Preset::ResNet20,
            Family::Resnet56 => Preset::ResNet56,
        };
        let norms = norms.unwrap_or(&[Norm::None, Norm::Batch]);
        (norms.iter())
            .map(|&norm| RunModel { base, norm })
            .collect()
    }
}

pub fn run(args: CompareArgs) -> Result<()> {
    args.run.device.check()?;
    if args.repeats == 0 {
        return Err(wgnorm::Error::InvalidArgument(
            "--repeats must be at least 1".to_string(),
        ));
    }
    if args.run.norm.is_some() {
        return Err(wgnorm::Error::InvalidArgument(
            "compare takes --norms (the normalizations compared, comma-separated), not --norm"
                .to_string(),
        ));
    }
    let models = args.family.models(args.norms.as_deref());
    let distinct: std::collections::BTreeSet<String> = models.iter().map(|m| m.name()).collect();
    if models.len() < 2 || distinct.len() != models.len() {
        return Err(wgnorm::Error::InvalidArgument(format!(
            "--norms needs at least two different normalizations, got {}",
            models
                .iter()
                .map(|m| m.norm.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    args.run.refuse_unused_batchnorm_flags(&models, "--norms")?;
    check_fresh(&args.out, "compare.json")?;
    let mut plan = Vec::new();
    for repeat in 0..args.repeats {
        for &model in &models {
            let mut config = args.run.config(model)?;
            config.seed = args.run.seed + repeat;
            let dir = args
                .out
                .join(format!("{}-seed{}", model.name(), config.seed));
            plan.push(PlannedRun { model, config, dir });
        }
    }
    // The settings shown are those of a model with BatchNorm, where there is one.
    let shown = (models.iter().find(|m| m.norm == Norm::Batch)).unwrap_or(&models[0]);
    let settings = args.run.config(*shown)?.settings()?;
    let owned: Vec<String> = models.iter().map(|m| m.name()).collect();
    let names: Vec<&str> = owned.iter().map(String::as_str).collect();
    let names = names.as_slice();
    let out = args.out.clone();
    let mut save = |runs: &[RunResult]| -> Result<()> {
        let json = serde_json::json!({
            "settings": settings,
            "repeats": args.repeats,
            "runs": runs,
        });
        write_text(&out, "compare.json", &serde_json::to_string_pretty(&json)?)?;
        write_text(&out, "compare.md", &markdown(runs, names))?;
        curves(&out.join("curves.png"), runs, names)
    };
    let runs = run_all(&args.run, plan, &mut save)?;
    println!("{}", markdown(&runs, names));
    Ok(())
}

fn runs_of<'a>(runs: &'a [RunResult], model: &'a str) -> impl Iterator<Item = &'a RunResult> + 'a {
    runs.iter().filter(move |r| r.model == model)
}

/// A measure of each finished run of `model`.
fn values(
    runs: &[RunResult],
    model: &str,
    measure: &dyn Fn(&RunResult) -> Option<f64>,
) -> Vec<f64> {
    runs_of(runs, model).filter_map(measure).collect()
}

type Measure = (&'static str, f64, usize, fn(&RunResult) -> Option<f64>);

const MEASURES: [Measure; 8] = [
    ("train loss", 1.0, 4, |r| {
        r.last_epoch().map(|e| e.train_loss)
    }),
    ("train accuracy (%)", 100.0, 2, |r| {
        r.last_epoch().map(|e| e.train_acc)
    }),
    ("val loss", 1.0, 4, |r| {
        r.last_epoch().and_then(|e| e.val_loss)
    }),
    ("val accuracy (%)", 100.0, 2, |r| {
        r.last_epoch().and_then(|e| e.val_acc)
    }),
    ("test loss", 1.0, 4, |r| r.test_loss),
    ("test accuracy (%)", 100.0, 2, |r| r.test_acc),
    (
        "test accuracy, BatchNorm with batch statistics (%)",
        100.0,
        2,
        |r| r.test_acc_batch_stats,
    ),
    ("seconds per epoch", 1.0, 2, |r| r.seconds_per_epoch),
];

/// The side-by-side table and a reading that states only what the numbers show.
pub fn markdown(runs: &[RunResult], names: &[&str]) -> String {
    let title = match names {
        [without, with] if *with == format!("{without}-bn") => "BatchNorm comparison",
        _ => "Normalization comparison",
    };
    let row = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut md = format!(
        "# {title}\n\n| measure (final epoch) | {} |\n",
        names.join(" | ")
    );
    md += &row(&vec!["---".to_string(); names.len() + 1]);
    for (label, scale, decimals, measure) in MEASURES {
        let cells: Vec<String> = names
            .iter()
            .map(|m| {
                summarize(&values(runs, m, &measure))
                    .map_or("–".to_string(), |s| s.format(scale, decimals))
            })
            .collect();
        md += &row(&[vec![label.to_string()], cells].concat());
    }
    let reach: Vec<String> = names
        .iter()
        .map(|m| {
            let epochs: Vec<String> = runs_of(runs, m)
                .map(
                    |r| match (&r.diverged, first_epoch_reaching(&r.epochs, TARGET_VAL_ACC)) {
                        (Some(_), _) => "diverged".to_string(),
                        (None, Some(epoch)) => epoch.to_string(),
                        (None, None) => "never".to_string(),
                    },
                )
                .collect();
            epochs.join(", ")
        })
        .collect();
    let reach_label = format!(
        "first epoch with val accuracy ≥ {:.0}% (per seed)",
        TARGET_VAL_ACC * 100.0
    );
    md += &row(&[vec![reach_label], reach].concat());
    let seeds: Vec<String> = (runs_of(runs, names[names.len() - 1]))
        .map(|r| r.seed.to_string())
        .collect();
    md += &format!(
        "\nSeeds: {}. Values are mean ± sample standard deviation over seeds.\n\n## Reading\n\n",
        seeds.join(", ")
    );
    for &other in &names[1..] {
        for (label, scale, decimals, measure) in MEASURES {
            let (a, b) = (
                values(runs, names[0], &measure),
                values(runs, other, &measure),
            );
            if let Some(reading) = read_difference(&a, &b) {
                let unit = if scale == 100.0 { " points" } else { "" };
                let sentence =
                    reading.sentence(label, (names[0], other), scale, unit, decimals + 1);
                md += &format!("- {sentence}\n");
            }
        }
    }
    for run in runs.iter().filter(|r| r.diverged.is_some()) {
        md += &format!("- {} seed {} diverged.\n", run.model, run.seed);
    }
    md
}

/// Train and validation loss and accuracy per epoch, each model's mean over its seeds.
fn curves(path: &std::path::Path, runs: &[RunResult], names: &[&str]) -> Result<()> {
    type Pick = fn(&wgnorm::train::EpochRecord) -> Option<f64>;
    let panels: [(&str, &str, Pick); 4] = [
        ("training loss", "loss", |e| Some(e.train_loss)),
        ("validation loss", "loss", |e| e.val_loss),
        ("training accuracy", "accuracy", |e| Some(e.train_acc)),
        ("validation accuracy", "accuracy", |e| e.val_acc),
    ];
    let panels: Vec<Panel> = panels
        .iter()
        .map(|&(title, y_label, pick)| Panel {
            title: title.to_string(),
            x_label: "epoch".to_string(),
            y_label: y_label.to_string(),
            log2_x: false,
            log10_y: false,
            lines: names
                .iter()
                .map(|model| {
                    let finished: Vec<&RunResult> = runs_of(runs, model)
                        .filter(|r| r.diverged.is_none())
                        .collect();
                    let epochs = finished.iter().map(|r| r.epochs.len()).min().unwrap_or(0);
                    let points = (0..epochs)
                        .filter_map(|i| {
                            let at: Vec<f64> =
                                finished.iter().filter_map(|r| pick(&r.epochs[i])).collect();
                            summarize(&at).map(|s| ((i + 1) as f64, s.mean))
                        })
                        .collect();
                    Line {
                        label: format!("{model} (mean of {} seeds)", finished.len()),
                        points,
                    }
                })
                .collect(),
        })
        .collect();
    let title = names.join(", ");
    plot::panels(path, &title, &panels, 2)
}
