//! `wgnorm export`: a saved model written again for deployment, as safetensors (f32 or f16) or
//! ONNX, its BatchNorm layers folded into the Linear or convolution before each (`--fold-bn`).

use std::path::PathBuf;

use clap::Args;

use super::eval::load_mnist_model;
use wgnorm::checkpoint;
use wgnorm::data::write_atomically;
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
    /// Write the model as an ONNX file (float32 [N, 784] or [N, 1, 28, 28] in, logits out, N
    /// chosen at run time); never over an existing file.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// The ONNX operator set the file declares (13 to 17).
    #[arg(long, default_value_t = wgnorm::onnx::DEFAULT_OPSET, requires = "onnx")]
    opset: i64,
    /// Fold each BatchNorm into the Linear or convolution before it (eval mode, computed in
    /// f64): the same function of the input with no BatchNorm layers.
    #[arg(long)]
    fold_bn: bool,
    /// How the safetensors file stores its values.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    export_dtype: Dtype,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let targets: Vec<&PathBuf> = [&args.safetensors, &args.onnx]
        .into_iter()
        .flatten()
        .collect();
    if targets.is_empty() {
        return Err(Error::InvalidArgument(
            "export needs somewhere to write: --safetensors FILE or --onnx FILE".to_string(),
        ));
    }
    let absolute = |path: &PathBuf| {
        std::path::absolute(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })
    };
    if let (Some(safetensors), Some(onnx)) = (&args.safetensors, &args.onnx)
        && absolute(safetensors)? == absolute(onnx)?
    {
        return Err(Error::InvalidArgument(format!(
            "--safetensors and --onnx both name {}: the ONNX file would replace the safetensors \
             one; choose two files",
            onnx.display()
        )));
    }
    if args.export_dtype != Dtype::F32 && args.safetensors.is_none() {
        return Err(Error::InvalidArgument(
            "--export-dtype has no effect without --safetensors: ONNX files hold float32"
                .to_string(),
        ));
    }
    if !wgnorm::onnx::OPSETS.contains(&args.opset) {
        return Err(Error::InvalidArgument(format!(
            "--opset {} is not supported: choose {} to {}",
            args.opset,
            wgnorm::onnx::OPSETS.start(),
            wgnorm::onnx::OPSETS.end()
        )));
    }
    if let Some(existing) = targets.iter().find(|target| target.exists()) {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; choose another file",
            existing.display()
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
    if let Some(target) = &args.safetensors {
        checkpoint::save_model(target, &spec, &model, saved.epochs_done, args.export_dtype)?;
        println!("wrote {}: {}", target.display(), spec.torch_module());
    }
    if let Some(target) = &args.onnx {
        let bytes = wgnorm::onnx::export(&spec, &model, args.opset)?;
        write_atomically(target, |file| std::io::Write::write_all(file, &bytes))?;
        println!(
            "wrote {}: ONNX opset {}, {}",
            target.display(),
            args.opset,
            spec.torch_module()
        );
    }
    Ok(())
}
