//! ONNX export checked by an independent runtime: tract runs the exported MLP and CNN, with
//! BatchNorm as `BatchNormalization` and folded away, on 1,000 MNIST test images, and its
//! logits match `wgnorm`'s within 1e-5 with the same predictions.

mod common;

use std::path::Path;

use common::{assert_close, assert_one_line_error, shared_mnist, train_on_cpu, wgnorm, wgnorm_ok};
use tract_onnx::prelude::*;
use wgnorm::checkpoint;
use wgnorm::cpu::CpuBackend;
use wgnorm::graph::{SampleShape, Sequential, StepKey};
use wgnorm::ops::batchnorm::Mode;
use wgnorm::{Backend, Dtype};

const IMAGES: usize = 1000;

/// The first `IMAGES` test images, scaled to [0, 1] as wgnorm reads them, and their labels.
fn test_images(data: &Path) -> (Vec<f32>, Vec<u8>) {
    let mnist = wgnorm::data::mnist::load(data).unwrap();
    let pixels = 784 * IMAGES;
    let x = mnist.test.images[..pixels]
        .iter()
        .map(|&b| f32::from(b) / 255.0)
        .collect();
    (x, mnist.test.labels[..IMAGES].to_vec())
}

/// wgnorm's eval-mode logits of the model at `path` on the CPU backend.
fn wgnorm_logits(path: &Path, x: &[f32]) -> Vec<f32> {
    let saved = checkpoint::load_model(path).unwrap();
    let backend = CpuBackend;
    let mut model =
        Sequential::upload_for_inference(&backend, &saved.spec, &saved.model, Dtype::F32).unwrap();
    let key = StepKey::new(0, 0);
    let input = backend.upload(x).unwrap();
    let (logits, _) = model
        .forward(&backend, Mode::Eval, input, IMAGES, key)
        .unwrap();
    backend.download(&logits).unwrap()
}

/// tract's logits of the ONNX file at `path`, fed [N, 784] or [N, 1, 28, 28] as `input` says.
fn tract_logits(path: &Path, input: SampleShape, x: &[f32]) -> Vec<f32> {
    let shape: Vec<usize> = match input {
        SampleShape::Flat(features) => vec![IMAGES, features],
        SampleShape::Image(image) => vec![IMAGES, image.channels, image.height, image.width],
    };
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact(&shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = Tensor::from_shape(&shape, x).unwrap();
    let outputs = model.run(tvec!(tensor.into())).unwrap();
    outputs[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn predictions(logits: &[f32]) -> Vec<usize> {
    logits
        .chunks(10)
        .map(|row| (0..10).fold(0, |best, j| if row[j] > row[best] { j } else { best }))
        .collect()
}

#[test]
fn tract_runs_the_exported_models_as_wgnorm_does() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (x, labels) = test_images(&data);
    let data = data.to_str().unwrap();
    // A residual net: an identity shortcut and a projection, each joined by Add then Relu.
    let resnet = "conv8k3p1,bn,relu,res(conv8k3p1,bn,relu,conv8k3p1,bn),\
                  res16s2(conv16k3s2p1,bn,relu,conv16k3p1,bn),avgpool,flatten,fc10";
    // Of the 1,000 test images each scores right after 100 steps (chance: 100); the residual
    // nets learn slowest.
    let models = [
        ("mlp-bn", "mlp-bn", 800),
        ("cnn-bn", "cnn-bn", 800),
        (resnet, "resnet", 150),
        ("resnet8", "resnet8", 150),
    ];
    for (model, name, learned) in models {
        train_on_cpu(dir.path(), data, model, "3200", name, &[]);
        let checkpoint = format!("{name}/model.safetensors");
        let saved = checkpoint::load_model(&dir.path().join(&checkpoint)).unwrap();
        let expected = wgnorm_logits(&dir.path().join(&checkpoint), &x);
        let reference: Vec<f64> = expected.iter().map(|&v| f64::from(v)).collect();
        let correct = |logits: &[f32]| {
            (predictions(logits).iter().zip(&labels))
                .filter(|&(&p, &l)| p == usize::from(l))
                .count()
        };
        for (fold, opset) in [(false, "13"), (true, "17")] {
            let onnx = format!("{name}-fold-{fold}.onnx");
            let mut args = vec!["export", "--checkpoint", &checkpoint, "--onnx", &onnx];
            args.extend(["--opset", opset]);
            if fold {
                args.push("--fold-bn");
            }
            let printed = wgnorm_ok(&args, dir.path());
            let printed = String::from_utf8_lossy(&printed.stdout);
            assert!(
                printed.contains(&format!("ONNX opset {opset}")),
                "{printed}"
            );
            let logits = tract_logits(&dir.path().join(&onnx), saved.spec.input(), &x);
            let what = format!("{name}, folded {fold}: tract against wgnorm");
            assert_close(&what, &logits, &reference, 1e-5);
            assert_eq!(correct(&logits), correct(&expected), "{what}");
        }
        assert!(correct(&expected) > learned, "{name} learned");
    }
    let nowhere = wgnorm(
        &["export", "--checkpoint", "mlp-bn/model.safetensors"],
        dir.path(),
    );
    assert_one_line_error(&nowhere, 2, "--safetensors FILE or --onnx FILE");
    let half_onnx = wgnorm(
        &[
            "export",
            "--checkpoint",
            "mlp-bn/model.safetensors",
            "--onnx",
            "x.onnx",
            "--export-dtype",
            "f16",
        ],
        dir.path(),
    );
    assert_one_line_error(
        &half_onnx,
        2,
        "--export-dtype has no effect without --safetensors",
    );
    let again = wgnorm(
        &[
            "export",
            "--checkpoint",
            "mlp-bn/model.safetensors",
            "--onnx",
            "mlp-bn-fold-true.onnx",
        ],
        dir.path(),
    );
    assert_one_line_error(&again, 2, "already exists");
    let unknown = wgnorm(
        &[
            "export",
            "--checkpoint",
            "mlp-bn/model.safetensors",
            "--onnx",
            "y.onnx",
            "--opset",
            "9",
        ],
        dir.path(),
    );
    assert_one_line_error(&unknown, 2, "--opset 9 is not supported: choose 13 to 17");
}
