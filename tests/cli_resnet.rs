//! The ResNet presets: their layers, depth and parameter count against the ResNet-(6n+2)
//! recipe, their names with each normalization, and from the command line: `--model resnet8`
//! trains on both backends, `eval` scores its checkpoint as `train` did, `--resume` continues
//! it bit for bit, `--norm` replaces its BatchNorms, and `--hidden`/`--dropout` are refused.
//! The runs read a small copy of MNIST (640 training and 500 test images) so that each takes
//! seconds: a ResNet's pass over the whole test set takes far longer on the CPU.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_one_line_error, eval_on_cpu, gpu, shared_mnist, wgnorm, wgnorm_ok};
use wgnorm::checkpoint::{self, MODEL_FILE, STATE_FILE};
use wgnorm::graph::{LayerSpec, MNIST_IMAGE, ModelSpec, Norm, Preset};
use wgnorm::ops::batchnorm::BatchNormConfig;

/// What `--model resnet8` expands to, as docs/training.md gives it.
const RESNET8_ARCH: &str = "conv16k3p1,bn,relu,res(conv16k3p1,bn,relu,conv16k3p1,bn),\
                            res32s2(conv32k3s2p1,bn,relu,conv32k3p1,bn),\
                            res64s2(conv64k3s2p1,bn,relu,conv64k3p1,bn),avgpool,flatten,fc10";

/// The parameters of a 3×3 or 1×1 convolution with bias, and of a BatchNorm (γ and β).
fn conv(inputs: u64, outputs: u64, kernel: u64) -> u64 {
    outputs * inputs * kernel * kernel + outputs
}

fn bn(channels: u64) -> u64 {
    2 * channels
}

/// ResNet-(6n+2)'s parameters, block by block, for 10 classes on one input channel.
fn resnet_params(n: u64) -> u64 {
    let stem = conv(1, 16, 3) + bn(16);
    let block = |c: u64| 2 * conv(c, c, 3) + 2 * bn(c);
    // The first block of stages 2 and 3: stride 2 from c/2 channels, projected shortcut.
    let down = |c: u64| conv(c / 2, c, 3) + conv(c, c, 3) + 2 * bn(c) + conv(c / 2, c, 1) + bn(c);
    let stages = n * block(16) + down(32) + (n - 1) * block(32) + down(64) + (n - 1) * block(64);
    stem + stages + conv(64, 10, 1)
}

#[test]
fn the_resnet_presets_have_the_depth_and_parameters_of_their_recipe() {
    // ResNet-8 by hand: 160 + 32 (stem), 4704 (stage 1), 14,624 (stage 2), 57,920 (stage 3),
    // 650 (fc10).
    assert_eq!(resnet_params(1), 78_090);
    for (preset, n) in [
        (Preset::ResNet8, 1),
        (Preset::ResNet20, 3),
        (Preset::ResNet56, 9),
    ] {
        let spec = ModelSpec::reference(preset);
        assert_eq!(spec.param_count(), resnet_params(n), "{}", preset.name());
        // Depth counts the convolutions and Linears on the main path, not the projections.
        let weighted = (spec.nodes().iter())
            .filter(|node| !node.name.contains("shortcut"))
            .filter(|node| matches!(node.layer, LayerSpec::Conv2d(_) | LayerSpec::Linear(_)))
            .count();
        assert_eq!(weighted as u64, 6 * n + 2, "{}", preset.name());
        assert_eq!(preset.name(), format!("resnet{}", 6 * n + 2));
        assert_eq!(Preset::named(preset.name()), Some(preset));
        assert_eq!(spec.blocks().len(), 3 + 3 * n as usize + 3);
        assert_eq!(spec.preset_name().as_deref(), Some(preset.name()));
        assert_eq!(spec.classes(), 10);
        // The library's builder without a preset gives the same network.
        let built = ModelSpec::resnet(
            n as usize,
            Norm::Batch,
            MNIST_IMAGE,
            10,
            BatchNormConfig::default(),
        )
        .unwrap();
        assert_eq!(built, spec);
    }
    let resnet8 = ModelSpec::reference(Preset::ResNet8);
    assert_eq!(resnet8.arch(), RESNET8_ARCH);
    let parsed = ModelSpec::from_arch(RESNET8_ARCH, MNIST_IMAGE, BatchNormConfig::default());
    assert_eq!(parsed.unwrap(), resnet8);
}

#[test]
fn a_resnet_takes_each_normalization_in_place_of_every_batchnorm() {
    let config = BatchNormConfig::default();
    for (norm, name, projection) in [
        (
            Norm::None,
            "resnet8-none",
            "res(conv32k3s2p1,relu,conv32k3p1|conv32k1s2)",
        ),
        (
            Norm::Layer,
            "resnet8-ln",
            "res(conv32k3s2p1,ln,relu,conv32k3p1,ln|conv32k1s2,ln)",
        ),
        (
            Norm::Group(8),
            "resnet8-gn8",
            "res(conv32k3s2p1,gn8,relu,conv32k3p1,gn8|conv32k1s2,gn8)",
        ),
        (
            Norm::Instance,
            "resnet8-in",
            "res(conv32k3s2p1,in,relu,conv32k3p1,in|conv32k1s2,in)",
        ),
    ] {
        let spec = Preset::ResNet8
            .spec_with_norm(norm, MNIST_IMAGE, &[], 10, 0.0, config)
            .unwrap();
        assert!(!spec.has_batchnorm(), "{name}");
        assert!(spec.arch().contains(projection), "{name}: {}", spec.arch());
        assert_eq!(spec.preset_name().as_deref(), Some(name));
        assert_eq!(Preset::ResNet8.name_with(norm), name);
        // Its --arch gives it back: a checkpoint's architecture reloads as the same model.
        let parsed = ModelSpec::from_arch(&spec.arch(), MNIST_IMAGE, config).unwrap();
        assert_eq!(parsed, spec, "{name}");
    }
    assert_eq!(Preset::ResNet20.name_with(Norm::Batch), "resnet20");
    let refused = [
        Preset::ResNet8.spec_with_norm(Norm::Batch, MNIST_IMAGE, &[128], 10, 0.2, config),
        ModelSpec::resnet(0, Norm::Batch, MNIST_IMAGE, 10, config),
        // 32 groups do not divide the stem's 16 channels.
        Preset::ResNet8.spec_with_norm(Norm::Group(32), MNIST_IMAGE, &[], 10, 0.0, config),
    ];
    let messages: Vec<String> = refused
        .into_iter()
        .map(|r| r.unwrap_err().to_string())
        .collect();
    assert!(messages[0].contains("no hidden layers"), "{}", messages[0]);
    assert!(
        messages[1].contains("at least one residual block"),
        "{}",
        messages[1]
    );
    assert!(messages[2].contains("layer 1 (`gn32`)"), "{}", messages[2]);
}

/// The first 640 training and 500 test images of ../shared/data/mnist, as IDX files in
/// `dir/mnist`.
fn small_mnist(dir: &Path) -> PathBuf {
    small_dataset(dir, "mnist")
}

/// The first 640 training and 500 test images of ../shared/data/`dataset` (mnist or
/// fashion-mnist), as IDX files in `dir/dataset`.
fn small_dataset(dir: &Path, dataset: &str) -> PathBuf {
    let source = shared_mnist().unwrap().with_file_name(dataset);
    let data = wgnorm::data::mnist::load(&source).unwrap();
    let out = dir.join(dataset);
    std::fs::create_dir(&out).unwrap();
    let pixels = wgnorm::data::mnist::PIXELS;
    for (split, stem, count) in [(&data.train, "train", 640), (&data.test, "t10k", 500)] {
        let mut images = Vec::new();
        for word in [2051, count as u32, 28, 28] {
            images.extend_from_slice(&u32::to_be_bytes(word));
        }
        images.extend_from_slice(&split.images[..count * pixels]);
        let mut labels = Vec::new();
        for word in [2049, count as u32] {
            labels.extend_from_slice(&u32::to_be_bytes(word));
        }
        labels.extend_from_slice(&split.labels[..count]);
        std::fs::write(out.join(format!("{stem}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(out.join(format!("{stem}-labels-idx1-ubyte")), labels).unwrap();
    }
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `wgnorm train --model resnet8` on `device` over `data`'s first 512 training images, into
/// `dir/out`, with `extra` flags.
fn train_resnet8(dir: &Path, data: &Path, device: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--model",
        "resnet8",
        "--device",
        device,
        "--train-limit",
        "512",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    wgnorm_ok(&args, dir);
}

/// Trains resnet8 for one epoch on `device`, and checks what metrics.json and the checkpoint
/// record and that `eval` on the same device scores the checkpoint as `train` did.
fn resnet8_trains_and_eval_agrees(device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = small_mnist(dir.path());
    train_resnet8(dir.path(), &data, device, "run", &["--epochs", "1"]);
    let run = dir.path().join("run");
    let metrics = json(&run.join("metrics.json"));
    assert_eq!(metrics["model"], "resnet8");
    assert_eq!(metrics["arch"], RESNET8_ARCH);
    let train_loss = metrics["epochs"][0]["train_loss"].as_f64().unwrap();
    // 16 steps from chance (ln 10 = 2.30): the loss has fallen (to 2.08-2.09 over seeds 0-2).
    assert!(train_loss < 2.2, "train loss {train_loss}");
    let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
    assert_eq!(saved.spec, ModelSpec::reference(Preset::ResNet8));
    // 7 BatchNorms on the main path and 2 on the projections.
    assert_eq!(saved.spec.batchnorm_nodes().len(), 9);
    let scored = wgnorm_ok(
        &[
            "eval",
            "--device",
            device,
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
            "--checkpoint",
            run.join(MODEL_FILE).to_str().unwrap(),
        ],
        dir.path(),
    );
    let scored: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    assert_eq!(scored["images"], 500);
    assert_eq!(scored["test_acc"], metrics["test_acc"], "{scored}");
    assert_eq!(scored["test_loss"], metrics["test_loss"], "{scored}");
}

/// One epoch of `resnet20` on 512 Fashion-MNIST images on `device`: 16 steps take the loss down
/// from chance (ln 10 = 2.30; 2.01 on the CPU with the default seed).
fn resnet20_learns_fashion_mnist(device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), "fashion-mnist");
    let data = data.to_str().unwrap();
    wgnorm_ok(
        &[
            "train",
            "--model",
            "resnet20",
            "--dataset",
            "fashion-mnist",
            "--device",
            device,
            "--train-limit",
            "512",
            "--epochs",
            "1",
            "--data-dir",
            data,
            "--out",
            "run",
        ],
        dir.path(),
    );
    let metrics = json(&dir.path().join("run/metrics.json"));
    assert_eq!(metrics["model"], "resnet20");
    assert_eq!(metrics["dataset"], "fashion-mnist");
    let train_loss = metrics["epochs"][0]["train_loss"].as_f64().unwrap();
    assert!(train_loss < 2.15, "train loss {train_loss} on {device}");
    // After 16 steps the running statistics still hold much of their start (momentum 0.1),
    // so the test accuracy says little; that it was measured says the evaluation ran.
    assert!(metrics["test_acc"].as_f64().is_some(), "{metrics}");
}

#[test]
fn resnet20_learns_fashion_mnist_on_both_backends() {
    if shared_mnist().is_none() {
        return;
    }
    resnet20_learns_fashion_mnist("cpu");
    if gpu().is_some() {
        resnet20_learns_fashion_mnist("gpu");
    }
}

#[test]
fn resnet8_trains_on_the_cpu_and_eval_scores_it_as_train_did() {
    if shared_mnist().is_none() {
        return;
    }
    resnet8_trains_and_eval_agrees("cpu");
}

#[test]
fn resnet8_trains_on_the_gpu_and_eval_scores_it_as_train_did() {
    if shared_mnist().is_none() || gpu().is_none() {
        return;
    }
    resnet8_trains_and_eval_agrees("gpu");
}

/// The tensors of `run`'s model file, as bits.
fn bits(run: &Path) -> Vec<(String, Vec<u32>)> {
    let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
    (saved.model.tensors())
        .map(|(name, values)| {
            (
                name.to_string(),
                values.iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

#[test]
fn a_resnet8_run_resumed_ends_as_an_uninterrupted_one_bit_for_bit() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = small_mnist(dir.path());
    train_resnet8(dir.path(), &data, "cpu", "whole", &["--epochs", "2"]);
    train_resnet8(dir.path(), &data, "cpu", "parts", &["--epochs", "1"]);
    train_resnet8(
        dir.path(),
        &data,
        "cpu",
        "parts",
        &["--epochs", "2", "--resume"],
    );
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    assert_eq!(bits(&whole), bits(&parts), "tensors differ");
    let spec = ModelSpec::reference(Preset::ResNet8);
    let names = ["exp_avg", "exp_avg_sq"];
    let (a, b) = (
        checkpoint::load_state(&whole.join(STATE_FILE), &spec, &names).unwrap(),
        checkpoint::load_state(&parts.join(STATE_FILE), &spec, &names).unwrap(),
    );
    assert_eq!(a.optimizer_steps, 32);
    assert_eq!(a.optimizer_steps, b.optimizer_steps);
    assert_eq!(a.optimizer, b.optimizer, "optimizer state differs");
    let (a, b) = (
        json(&whole.join("metrics.json")),
        json(&parts.join("metrics.json")),
    );
    assert_eq!(a["epochs"][1]["val_loss"], b["epochs"][1]["val_loss"]);
    assert_eq!(a["test_acc"], b["test_acc"]);
}

#[test]
fn a_resnet_trains_with_layernorm_and_without_normalization() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = small_mnist(dir.path());
    for (norm, name) in [("ln", "resnet8-ln"), ("none", "resnet8-none")] {
        let extra = ["--norm", norm, "--epochs", "1", "--no-validation"];
        train_resnet8(dir.path(), &data, "cpu", name, &extra);
        let run = dir.path().join(name);
        let metrics = json(&run.join("metrics.json"));
        assert_eq!(metrics["model"], name);
        let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
        assert!(!saved.spec.has_batchnorm(), "{name}");
        assert_eq!(saved.spec.preset_name().as_deref(), Some(name));
        let model = run.join(MODEL_FILE);
        let (acc, loss) = eval_on_cpu(model.to_str().unwrap(), data.to_str().unwrap(), dir.path());
        assert_eq!(metrics["test_acc"].as_f64(), Some(acc), "{name}");
        assert_eq!(metrics["test_loss"].as_f64(), Some(loss), "{name}");
    }
    // The BatchNorm flags have no BatchNorm to act on without bn.
    let output = wgnorm(
        &[
            "train", "--model", "resnet8", "--norm", "ln", "--bn-eps", "1e-3",
        ],
        dir.path(),
    );
    assert_one_line_error(&output, 2, "--bn-eps has no effect");
}

#[test]
fn hidden_and_dropout_are_refused_with_a_resnet() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            &["train", "--model", "resnet8", "--hidden", "64"][..],
            "--hidden has no effect on resnet8",
        ),
        (
            &["train", "--model", "resnet20", "--dropout", "0.1"],
            "--dropout has no effect on resnet20",
        ),
        (
            &[
                "train", "--model", "resnet8", "--norm", "ln", "--hidden", "64",
            ],
            "--hidden has no effect on resnet8-ln",
        ),
        (
            &["compare", "--family", "resnet8", "--dropout", "0.3"],
            "--dropout has no effect on resnet8-none",
        ),
        (
            &["sweep", "--models", "resnet8,mlp", "--hidden", "64"],
            "--hidden has no effect on resnet8",
        ),
    ] {
        let mut args = args.to_vec();
        args.extend(["--out", "never"]);
        assert_one_line_error(&wgnorm(&args, dir.path()), 2, needle);
        assert!(!dir.path().join("never").exists());
    }
}
