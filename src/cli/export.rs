//! `wgnorm export`: a saved model written again for deployment, its BatchNorm layers folded
//! into the Linear or convolution before each (`--fold-bn`) and its values stored as f32 or f16.

use std::path::PathBuf;

use clap::Args;

use super::eval::load_mnist_model;
use wgnorm::checkpoint;
use wgnorm::graph::fold_batchnorm;
use wgnorm::{Dtype, Error, Result};

#[derive(Args)]
pub struct ExportArgs {
    /// A model.safetensors written by `wgnorm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Write the model as a safetensors file PyTorch loads into the `nn.Sequential` its
    /// metadata names; never over an existing file.
    #[arg(long)]
    safetensors: Option<PathBuf>,
    /// Fold each BatchNorm into the Linear or convolution before it (eval mode, computed in
    /// f64): the same function of the input with no BatchNorm layers.
    #[arg(long)]
    fold_bn: bool,
    /// How the written file stores its values.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    export_dtype: Dtype,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let Some(target) = &args.safetensors else {
        return Err(Error::InvalidArgument(
            "export needs somewhere to write: --safetensors FILE".to_string(),
        ));
    };
    if target.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; choose another file",
            target.display()
        )));
    }
    let saved = load_mnist_model(&args.checkpoint)?;
    if args.fold_bn && !saved.spec.has_batchnorm() {
        return Err(Error::InvalidArgument(format!(
            "--fold-bn has no effect: {} has no BatchNorm layer",
            args.checkpoint.display()
        )));
    }
    let (spec, model) = match args.fold_bn {
        true => fold_batchnorm(&saved.spec, &saved.model)?,
        false => (saved.spec.clone(), saved.model.clone()),
    };
    checkpoint::save_model(target, &spec, &model, saved.epochs_done, args.export_dtype)?;
    println!("wrote {}: {}", target.display(), spec.torch_module());
    Ok(())
}
