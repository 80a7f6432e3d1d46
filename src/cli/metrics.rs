//! `metrics.json` and `metrics.csv`: what a run writes beside its checkpoints after every epoch.

use std::path::Path;

use wgnorm::Result;
use wgnorm::data::write_atomically;
use wgnorm::ops::loss::LossTotals;
use wgnorm::train::{EarlyStop, EpochRecord, TrainConfig};

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
            "best_epoch": (self.config.patience)
                .and_then(|patience| EarlyStop::of(history, patience).best)
                .map(|(epoch, _)| epoch),
            "train_seconds": train_seconds,
        });
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
