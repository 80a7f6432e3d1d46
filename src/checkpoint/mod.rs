//! Checkpoints as safetensors files.
//!
//! `model.safetensors` holds the `state_dict` of the equivalent `torch.nn.Sequential` (names,
//! shapes and dtypes as PyTorch writes them) with the architecture in the metadata, so
//! `model.load_state_dict(safetensors.torch.load_file(path))` works. `training_state.safetensors`
//! holds what `--resume` needs beyond the model: optimizer state, step counts, the settings the
//! run was started with and the epochs so far. Both are written atomically.

mod run;

pub use run::{Progress, Restored, load_run, read_run, save_run};

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype as TensorDtype, SafeTensors, TensorView};

use crate::backend::Dtype;

use crate::data::write_atomically;
use crate::graph::{HostModel, ModelSpec};
use crate::{Error, Result};

/// The model file of a run's directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state and history beside it, for `--resume`.
pub const STATE_FILE: &str = "training_state.safetensors";
/// The f16 copy of a finished run's model (`wgnorm train --export-dtype f16`).
pub const F16_MODEL_FILE: &str = "model.f16.safetensors";
/// With early stopping, the model of the epoch with the lowest validation loss, beside the last.
pub const BEST_MODEL_FILE: &str = "best.safetensors";

const MODEL_FORMAT: &str = "wgnorm-mlp-1";
const STATE_FORMAT: &str = "wgnorm-training-state-1";

/// A model file's contents.
pub struct ModelCheckpoint {
    /// The architecture, from the file's metadata.
    pub spec: ModelSpec,
    /// Weights and running statistics.
    pub model: HostModel,
    /// Training epochs finished when it was written.
    pub epochs_done: usize,
}

/// A training-state file's contents.
pub struct TrainingState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Optimizer steps taken (Adam's bias correction needs it).
    pub optimizer_steps: u64,
    /// The run's settings as JSON; a resumed run must match them.
    pub settings: String,
    /// One JSON object per finished epoch.
    pub history: String,
    /// state[parameter][state name index], in `ModelSpec::params` order.
    pub optimizer: Vec<Vec<Vec<f32>>>,
}

fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
type Entry = (String, TensorDtype, Vec<usize>, Vec<u8>);

fn f32_entry(name: String, shape: Vec<usize>, values: &[f32]) -> Entry {
    float_entry(name, shape, values, Dtype::F32)
}

fn float_entry(name: String, shape: Vec<usize>, values: &[f32], dtype: Dtype) -> Entry {
    match dtype {
        Dtype::F32 => {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, TensorDtype::F32, shape, bytes)
        }
        Dtype::F16 => {
            let bytes = values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            (name, TensorDtype::F16, shape, bytes)
        }
    }
}

/// Serializes named tensors and writes them atomically.
fn write(path: &Path, entries: Vec<Entry>, metadata: HashMap<String, String>) -> Result<()> {
    let views = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| format_error(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| format_error(path, e.to_string()))?;
    write_atomically(path, |file| file.write_all(&bytes))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file's tensors and metadata, checking its format tag.
struct Reader<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, bytes: &'a [u8], format: &str) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format_error(path, format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| format_error(path, format!("not a safetensors file: {e}")))?;
        let reader = Self {
            path,
            tensors,
            metadata,
        };
        let found = reader.metadata.get("format").ok_or_else(|| {
            format_error(
                path,
                format!("a safetensors file, but not {format:?}: its metadata has no \"format\""),
            )
        })?;
        if found != format {
            return Err(format_error(
                path,
                format!("format is {found:?}, expected {format:?}"),
            ));
        }
        Ok(reader)
    }

    fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format_error(self.path, format!("metadata has no {key:?}")))
    }

    fn meta_number<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let text = self.meta(key)?;
        text.parse().map_err(|_| {
            format_error(
                self.path,
                format!("metadata {key:?} is not a number: {text:?}"),
            )
        })
    }

    /// The bytes of tensor `name`, which must have `shape` and one of `dtypes`.
    fn tensor(
        &self,
        name: &str,
        dtypes: &[TensorDtype],
        shape: &[usize],
    ) -> Result<(TensorDtype, &'a [u8])> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| format_error(self.path, format!("tensor {name} is missing")))?;
        if !dtypes.contains(&view.dtype()) || view.shape() != shape {
            return Err(format_error(
                self.path,
                format!(
                    "tensor {name} is {:?} {:?}, expected {} {shape:?}",
                    view.dtype(),
                    view.shape(),
                    dtypes
                        .iter()
                        .map(|d| format!("{d:?}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
        Ok((view.dtype(), view.data()))
    }

    /// An F32 or F16 tensor as f32 values.
    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, bytes) = self.tensor(name, &[TensorDtype::F32, TensorDtype::F16], shape)?;
        Ok(if dtype == TensorDtype::F16 {
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        } else {
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }

    fn count(&self, name: &str) -> Result<u64> {
        let (_, bytes) = self.tensor(name, &[TensorDtype::I64], &[])?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        u64::try_from(i64::from_le_bytes(word))
            .map_err(|_| format_error(self.path, format!("tensor {name} is negative")))
    }
}

/// Writes the model's `state_dict` and architecture.
pub fn save_model(
    path: &Path,
    spec: &ModelSpec,
    model: &HostModel,
    epochs_done: usize,
    dtype: Dtype,
) -> Result<()> {
    model.check(spec)?;
    let mut tensors = Vec::new();
    for tensor in spec.tensors() {
        let values = model.tensor(&tensor.name)?;
        tensors.push(float_entry(tensor.name, tensor.shape, values, dtype));
    }
    for batchnorm in spec.batchnorm_nodes() {
        // A 0-dim int64 tensor, as PyTorch stores it.
        let batches = model.batches_tracked(&batchnorm.name)?;
        let count = i64::try_from(batches).unwrap_or(i64::MAX);
        tensors.push((
            format!("{}.num_batches_tracked", batchnorm.name),
            TensorDtype::I64,
            vec![],
            count.to_le_bytes().to_vec(),
        ));
    }
    let metadata = HashMap::from([
        ("format".to_string(), MODEL_FORMAT.to_string()),
        ("architecture".to_string(), serde_json::to_string(spec)?),
        ("torch_module".to_string(), spec.torch_module()),
        ("epochs_done".to_string(), epochs_done.to_string()),
    ]);
    write(path, tensors, metadata)
}

/// Reads a model file written by `save_model`, checking every name, dtype and shape.
pub fn load_model(path: &Path) -> Result<ModelCheckpoint> {
    parse_model(path, &read_file(path)?)
}

/// `load_model` on bytes already read; `path` is the name errors give them.
pub fn parse_model(path: &Path, bytes: &[u8]) -> Result<ModelCheckpoint> {
    let reader = Reader::new(path, bytes, MODEL_FORMAT)?;
    // An MLP's architecture is written as every version has written it; other stacks as
    // their input and `--arch` layers (`ModelSpec`'s serde form). Reading checks it.
    let spec: ModelSpec = serde_json::from_str(reader.meta("architecture")?)
        .map_err(|e| format_error(path, format!("architecture metadata: {e}")))?;
    let mut model = HostModel::default();
    for tensor in spec.tensors() {
        let values = reader.floats(&tensor.name, &tensor.shape)?;
        model.insert(tensor.name, values);
    }
    for batchnorm in spec.batchnorm_nodes() {
        let count = reader.count(&format!("{}.num_batches_tracked", batchnorm.name))?;
        model.set_batches_tracked(batchnorm.name, count);
    }
    Ok(ModelCheckpoint {
        spec,
        model,
        epochs_done: reader.meta_number("epochs_done")?,
    })
}

/// Writes the optimizer state and progress of a run.
pub fn save_state(
    path: &Path,
    spec: &ModelSpec,
    state_names: &[&str],
    state: &TrainingState,
) -> Result<()> {
    let mut tensors = Vec::new();
    for (param, per_param) in spec.params().iter().zip(&state.optimizer) {
        for (name, values) in state_names.iter().zip(per_param) {
            tensors.push(f32_entry(
                format!("optimizer.{}.{name}", param.name),
                param.shape.clone(),
                values,
            ));
        }
    }
    let metadata = HashMap::from([
        ("format".to_string(), STATE_FORMAT.to_string()),
        ("epochs_done".to_string(), state.epochs_done.to_string()),
        (
            "optimizer_steps".to_string(),
            state.optimizer_steps.to_string(),
        ),
        ("settings".to_string(), state.settings.clone()),
        ("history".to_string(), state.history.clone()),
    ]);
    write(path, tensors, metadata)
}

/// The settings a training-state file was written with, read without its tensors, so that a
/// resume with other settings is refused before their absence is.
pub fn state_settings(path: &Path) -> Result<String> {
    let bytes = read_file(path)?;
    let reader = Reader::new(path, &bytes, STATE_FORMAT)?;
    Ok(reader.meta("settings")?.to_string())
}

/// Reads a training-state file for a model of `spec` and an optimizer keeping `state_names`.
pub fn load_state(path: &Path, spec: &ModelSpec, state_names: &[&str]) -> Result<TrainingState> {
    parse_state(path, &read_file(path)?, spec, state_names)
}

/// `load_state` on bytes already read; `path` is the name errors give them.
pub fn parse_state(
    path: &Path,
    bytes: &[u8],
    spec: &ModelSpec,
    state_names: &[&str],
) -> Result<TrainingState> {
    let reader = Reader::new(path, bytes, STATE_FORMAT)?;
    let optimizer = spec
        .params()
        .iter()
        .map(|param| {
            state_names
                .iter()
                .map(|name| {
                    reader.floats(&format!("optimizer.{}.{name}", param.name), &param.shape)
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    Ok(TrainingState {
        epochs_done: reader.meta_number("epochs_done")?,
        optimizer_steps: reader.meta_number("optimizer_steps")?,
        settings: reader.meta("settings")?.to_string(),
        history: reader.meta("history")?.to_string(),
        optimizer,
    })
}
