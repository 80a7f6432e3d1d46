//! A run's directory: `model.safetensors` and `training_state.safetensors` beside it, written
//! state first so that a model file never claims more epochs than the state beside it, and read
//! back only when both agree with each other and with what the caller is about to train.

use std::path::Path;

use super::{MODEL_FILE, ModelCheckpoint, STATE_FILE, TrainingState};
use crate::backend::Dtype;
use crate::graph::{Compute, ModelSpec, Sequential};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::{Error, Result};

/// How far a run has come, beside its tensors.
pub struct Progress<'a> {
    /// Epochs finished.
    pub epochs_done: usize,
    /// The settings the run was started with; resuming requires the same.
    pub settings: &'a serde_json::Value,
    /// One JSON object per finished epoch, as a JSON array.
    pub history: &'a str,
}

/// What `load_run` read: the model and the training state, consistent with each other.
pub struct Restored {
    /// Weights, running statistics and the architecture.
    pub model: ModelCheckpoint,
    /// Optimizer state, step count, settings and history.
    pub state: TrainingState,
    /// The settings the run was started with.
    pub settings: serde_json::Value,
    /// The optimizer they name.
    pub optimizer: OptimizerConfig,
}

/// Writes `dir`'s model and training state. The model's tensors and the optimizer's state are
/// read back from the device together, in one `download_many`.
pub fn save_run<B: Compute>(
    backend: &B,
    dir: &Path,
    mlp: &Sequential<B>,
    optimizer: &Optimizer<B>,
    progress: Progress<'_>,
) -> Result<()> {
    let model_tensors = mlp.tensors()?;
    let split = model_tensors.len();
    let mut all = model_tensors;
    all.extend(optimizer.tensors());
    let mut values = backend.download_many(&all)?;
    let state_values = values.split_off(split);
    let model = mlp.host_model(values)?;
    let state = TrainingState {
        epochs_done: progress.epochs_done,
        optimizer_steps: optimizer.steps,
        settings: progress.settings.to_string(),
        history: progress.history.to_string(),
        optimizer: optimizer.host_state(state_values),
    };
    super::save_state(
        &dir.join(STATE_FILE),
        &mlp.spec,
        optimizer.config.state_names(),
        &state,
    )?;
    super::save_model(
        &dir.join(MODEL_FILE),
        &mlp.spec,
        &model,
        progress.epochs_done,
        Dtype::F32,
    )
}

/// Reads `dir`'s model and training state for a run of `spec` started with `settings`. The
/// settings are compared before any tensor is read, so another optimizer is refused by name
/// rather than by its missing state; the two files must hold the same epoch.
pub fn load_run(dir: &Path, spec: &ModelSpec, settings: &serde_json::Value) -> Result<Restored> {
    read(dir, Some((spec, settings)))
}

/// Reads `dir`'s model and training state as they are, whatever run wrote them (the two files
/// must still hold the same epoch).
pub fn read_run(dir: &Path) -> Result<Restored> {
    read(dir, None)
}

fn read(dir: &Path, expected: Option<(&ModelSpec, &serde_json::Value)>) -> Result<Restored> {
    let model_path = dir.join(MODEL_FILE);
    let state_path = dir.join(STATE_FILE);
    let model = super::load_model(&model_path)?;
    let saved = super::state_settings(&state_path)?;
    let format_error = |message: String| Error::Format {
        path: state_path.clone(),
        message,
    };
    let settings: serde_json::Value = serde_json::from_str(&saved)
        .map_err(|e| format_error(format!("settings metadata: {e}")))?;
    if let Some((spec, wanted)) = expected {
        if &model.spec != spec {
            return Err(Error::InvalidArgument(format!(
                "cannot resume: {} holds {}, but {} was asked for",
                model_path.display(),
                model.spec.describe(),
                spec.describe()
            )));
        }
        if &settings != wanted {
            let mut differences = Vec::new();
            setting_differences("", &settings, wanted, &mut differences);
            return Err(Error::InvalidArgument(format!(
                "cannot resume: the run in {} was started with other settings ({}); only the \
                 number of epochs may change",
                dir.display(),
                differences.join("; ")
            )));
        }
    }
    let optimizer: OptimizerConfig = serde_json::from_value(settings["optimizer"].clone())
        .map_err(|e| format_error(format!("the settings name no optimizer: {e}")))?;
    let state = super::load_state(&state_path, &model.spec, optimizer.state_names())?;
    if state.epochs_done != model.epochs_done {
        return Err(Error::Format {
            path: model_path,
            message: format!(
                "holds epoch {} but {STATE_FILE} holds epoch {}; the run was interrupted while \
                 saving and cannot be resumed exactly",
                model.epochs_done, state.epochs_done
            ),
        });
    }
    Ok(Restored {
        model,
        state,
        settings,
        optimizer,
    })
}

/// Each setting that differs between a run's saved settings and the asked ones, as
/// "path: saved in the run, asked now" ("optimizer.adam.lr: 0.001 in the run, 0.01 now").
fn setting_differences(
    path: &str,
    saved: &serde_json::Value,
    asked: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (saved, asked) {
        (Value::Object(a), Value::Object(b)) if a.keys().eq(b.keys()) => {
            for (key, value) in a {
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                setting_differences(&inner, value, &b[key], out);
            }
        }
        _ if saved != asked => out.push(format!("{path}: {saved} in the run, {asked} now")),
        _ => {}
    }
}
