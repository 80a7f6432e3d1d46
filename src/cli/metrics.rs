//! `metrics.json` and `metrics.csv`: what a run writes beside its checkpoints after every epoch.

use std::path::Path;

use wgnorm::Result;
use wgnorm::data::write_atomically;
use wgnorm::graph::ModelSpec;
use wgnorm::ops::loss::LossTotals;
use wgnorm::train::{EarlyStop, EpochRecord, GradNormLayout, TrainConfig};

use crate::plot::{self, Line, Panel};

/// `metrics.json` and `metrics.csv` of a run.
pub struct MetricsFile<'a> {
    pub dataset: &'a str,
    pub device: &'a str,
    pub adapter: &'a str,
    pub config: &'a TrainConfig,
}

impl MetricsFile<'_> {
    pub fn write(
        &self,
        out: &Path,
        history: &[EpochRecord],
        test: Option<LossTotals>,
        test_batch_stats: Option<LossTotals>,
    ) -> Result<()> {
        let train_seconds: f64 = history.iter().map(|r| r.seconds).sum();
        let json = serde_json::json!({
            "dataset": self.dataset,
            "model": self.config.spec.preset_name().unwrap_or_else(|| "custom".to_string()),
            "arch": self.config.spec.arch(),
            "architecture": self.config.spec.torch_module(),
            "device": self.device,
            "adapter": self.adapter,
            "batch_size": self.config.batch_size,
            "seed": self.config.seed,
            "settings": self.config.settings()?,
            "epochs": history,
            "test_loss": test.map(|t| t.mean_loss()),
            "test_acc": test.map(|t| t.accuracy()),
            "test_acc_batch_stats": test_batch_stats.map(|t| t.accuracy()),
            "best_epoch": (self.config.patience)
                .and_then(|patience| EarlyStop::of(history, patience).best)
                .map(|(epoch, _)| epoch),
            "train_seconds": train_seconds,
        });
        let mut json = json;
        if let Some(every) = self.config.log_grad_norms {
            let layout = GradNormLayout::of(&self.config.spec);
            json["grad_norm_every"] = every.into();
            json["grad_norm_names"] = layout.names().into();
            let plot = out.join("grad_norms.png");
            grad_norm_plot(&plot, &self.config.spec, &layout, history)?;
        }
        let text = serde_json::to_string_pretty(&json)?;
        write_atomically(&out.join("metrics.json"), |file| {
            use std::io::Write;
            writeln!(file, "{text}")
        })?;
        write_atomically(&out.join("metrics.csv"), |file| {
            use std::io::Write;
            writeln!(
                file,
                "epoch,train_loss,train_acc,val_loss,val_acc,seconds,training_seconds,lr"
            )?;
            let optional = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
            for r in history {
                writeln!(
                    file,
                    "{},{},{},{},{},{},{},{}",
                    r.epoch,
                    r.train_loss,
                    r.train_acc,
                    optional(r.val_loss),
                    optional(r.val_acc),
                    r.seconds,
                    r.training_seconds,
                    r.lr
                )?;
            }
            Ok(())
        })
    }
}

/// The logged gradient norms over the steps on a log scale: each layer's weight (γ for a
/// normalization) in one panel, the gradient reaching each Linear and convolution input in
/// the other, one line per layer.
fn grad_norm_plot(
    path: &Path,
    spec: &ModelSpec,
    layout: &GradNormLayout,
    history: &[EpochRecord],
) -> Result<()> {
    let records: Vec<_> = history.iter().flat_map(|r| &r.grad_norms).collect();
    let panel = |title: &str, suffix: &str| Panel {
        title: title.to_string(),
        x_label: "step".to_string(),
        y_label: "L2 norm".to_string(),
        log2_x: false,
        log10_y: true,
        lines: (layout.names().iter().enumerate())
            .filter(|(_, name)| name.ends_with(suffix))
            .map(|(at, name)| Line {
                // `3.weight` (fc128): the layer's `--arch` token beside its state_dict name.
                label: match (name.rsplit_once('.'))
                    .and_then(|(node, _)| spec.nodes().iter().find(|n| n.name == node))
                {
                    Some(node) => format!("{name} ({})", node.layer),
                    None => name.clone(),
                },
                points: (records.iter())
                    .map(|r| (r.step as f64, r.norms[at]))
                    .filter(|&(_, norm)| norm > 0.0 && norm.is_finite())
                    .collect(),
            })
            .collect(),
    };
    let panels = [
        panel("gradient of each weight", ".weight"),
        panel(
            "gradient reaching each Linear and convolution input",
            ".input",
        ),
    ];
    plot::panels(path, "gradient norms", &panels, 2)
}
