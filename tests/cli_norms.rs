//! `--norm` and `compare --norms` from the command line: the MLP and the CNN train with
//! LayerNorm, GroupNorm and InstanceNorm on both backends, their checkpoints name PyTorch's
//! modules and `eval` scores them as `train` did; `compare` puts several normalizations side
//! by side; every misuse is one line naming the flag.

mod common;

use std::path::Path;

use common::{assert_one_line_error, assert_png_shows_curves, gpu, shared_mnist, wgnorm};
use wgnorm::checkpoint::{self, MODEL_FILE};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Trains `model_args` for one epoch on 1024 images on `device`, then checks the name and
/// layers metrics.json and the checkpoint record and that `eval` scores it as `train` did.
fn trains_and_evaluates(
    device: &str,
    model_args: &[&str],
    name: &str,
    torch_module: &str,
) -> tempfile::TempDir {
    let data = shared_mnist().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "train",
        "--device",
        device,
        "--epochs",
        "1",
        "--train-limit",
        "1024",
        "--no-validation",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        "run",
    ];
    args.extend_from_slice(model_args);
    let output = wgnorm(&args, dir.path());
    assert!(output.status.success(), "{output:?}");
    let run = dir.path().join("run");
    let metrics = json(&run.join("metrics.json"));
    assert_eq!(metrics["model"], name);
    let test_acc = metrics["test_acc"].as_f64().unwrap();
    assert!(test_acc > 0.5, "{name}: test accuracy {test_acc}");
    let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
    assert_eq!(saved.spec.torch_module(), torch_module);
    assert!(
        saved.spec.batchnorm_nodes().is_empty(),
        "no running statistics"
    );
    let scored = wgnorm(
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
    assert!(scored.status.success(), "{scored:?}");
    let scored: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    assert_eq!(scored["test_acc"].as_f64(), Some(test_acc), "{scored}");
    dir
}

#[test]
fn the_mlp_trains_with_layernorm_on_the_cpu() {
    if shared_mnist().is_none() {
        return;
    }
    // Without --model, --norm goes into the default MLP.
    let dir = trains_and_evaluates(
        "cpu",
        &["--norm", "ln"],
        "mlp-ln",
        "nn.Sequential(nn.Linear(784, 128), nn.LayerNorm(128), nn.ReLU(), nn.Dropout(0.2), \
         nn.Linear(128, 10))",
    );
    // ONNX export covers BatchNorm, not these: refused naming the layer, nothing written.
    let model = "run/model.safetensors";
    for args in [
        &["export", "--checkpoint", model, "--onnx", "model.onnx"][..],
        &["recalibrate", "--checkpoint", model, "--out", "recal"],
        &["eval", "--checkpoint", model, "--batch-stats", "32"],
    ] {
        let output = wgnorm(args, dir.path());
        let needle = match args[0] {
            "export" => "layer 1 (`ln`)",
            _ => "no BatchNorm layer",
        };
        assert_one_line_error(&output, 2, needle);
    }
    assert!(!dir.path().join("model.onnx").exists());
}

#[test]
fn the_mlp_trains_with_groupnorm_on_the_gpu() {
    if shared_mnist().is_none() || gpu().is_none() {
        return;
    }
    let _ = trains_and_evaluates(
        "gpu",
        &["--model", "nobn", "--norm", "gn:8"],
        "mlp-gn8",
        "nn.Sequential(nn.Linear(784, 128), nn.GroupNorm(8, 128), nn.ReLU(), nn.Dropout(0.2), \
         nn.Linear(128, 10))",
    );
}

#[test]
fn the_cnn_trains_with_instancenorm_on_the_cpu() {
    if shared_mnist().is_none() {
        return;
    }
    let _ = trains_and_evaluates(
        "cpu",
        &["--model", "cnn", "--norm", "in"],
        "cnn-in",
        "nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.InstanceNorm2d(32, affine=True), \
         nn.ReLU(), nn.MaxPool2d(2, stride=2), nn.Conv2d(32, 64, 3, padding=1), \
         nn.InstanceNorm2d(64, affine=True), nn.ReLU(), nn.MaxPool2d(2, stride=2), \
         nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))",
    );
}

#[test]
fn misused_norm_flags_are_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--device", "cpu", "--out", "never"];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    for (args, needle) in [
        (
            &["--model", "mlp-bn", "--norm", "ln"][..],
            "has BatchNorm already",
        ),
        (
            &["--model", "mlp", "--norm", "in"],
            "InstanceNorm normalizes",
        ),
        (
            &["--model", "mlp", "--norm", "gn:0"],
            "expected bn, ln, gn<G> or gn:<G>",
        ),
        // gn8 and gn:8 are one GroupNorm, named as --arch writes it.
        (
            &["--model", "mlp-bn", "--norm", "gn:8"],
            "(use --model mlp --norm gn8)",
        ),
        (
            &["--model", "mlp-bn", "--norm", "gn8"],
            "(use --model mlp --norm gn8)",
        ),
        (&["--arch", "fc64,gn:8,relu,fc7"], "fc10"),
        (
            &["--model", "mlp", "--norm", "gn:5"],
            "128 channels into 5 groups",
        ),
        (
            &["--model", "mlp", "--norm", "ln", "--bn-eps", "1e-3"],
            "--bn-eps",
        ),
        (
            &["--arch", "fc64,ln,relu,fc10", "--norm", "ln"],
            "--norm has no effect",
        ),
        (&["--arch", "fc64,gn0,relu,fc10"], "gn<groups>"),
        (
            &["--arch", "fc64,in,relu,fc10"],
            "InstanceNorm needs images",
        ),
    ] {
        assert_one_line_error(&train(args), 2, needle);
    }
    let compare = |extra: &[&str]| {
        let mut args = vec!["compare", "--device", "cpu", "--out", "never"];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    for (args, needle) in [
        (&["--norm", "ln"][..], "takes --norms"),
        (&["--norms", "ln,ln"], "two different normalizations"),
        (
            &["--norms", "gn8,gn:8"],
            "two different normalizations, got gn8,gn8",
        ),
        (&["--norms", "ln"], "two different normalizations"),
        (
            &["--norms", "ln,none", "--bn-momentum", "0.01"],
            "--bn-momentum",
        ),
    ] {
        assert_one_line_error(&compare(args), 2, needle);
    }
    assert!(!dir.path().join("never").exists());
}

#[test]
fn compare_puts_each_normalization_side_by_side() {
    if shared_mnist().is_none() {
        return;
    }
    let data = shared_mnist().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = wgnorm(
        &[
            "compare",
            "--device",
            "cpu",
            "--norms",
            "bn,ln,gn:4,none",
            "--epochs",
            "1",
            "--train-limit",
            "512",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "cmp",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{output:?}");
    let out = dir.path().join("cmp");
    let runs = json(&out.join("compare.json"))["runs"].clone();
    let models: Vec<&str> = (runs.as_array().unwrap().iter())
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["mlp-bn", "mlp-ln", "mlp-gn4", "mlp"]);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.starts_with("# Normalization comparison"), "{md}");
    assert!(md.contains("| measure (final epoch) | mlp-bn | mlp-ln | mlp-gn4 | mlp |"));
    // One seed each: each difference is read against the first model, without a spread.
    for model in ["mlp-ln", "mlp-gn4", "mlp"] {
        assert!(
            md.contains(&format!("- test accuracy (%): {model}")),
            "{md}"
        );
    }
    assert_png_shows_curves(&out.join("curves.png"), 2);
}

#[test]
fn sweep_crosses_normalizations_batch_sizes_and_seeds() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sweep = |extra: &[&str]| {
        let mut args = vec![
            "sweep",
            "--device",
            "cpu",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    let output = sweep(&[
        "--norms",
        "bn,ln",
        "--batch-sizes",
        "4,8",
        "--repeats",
        "2",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--out",
        "sweep",
    ]);
    assert!(output.status.success(), "{output:?}");
    let out = dir.path().join("sweep");
    let runs = json(&out.join("sweep.json"))["runs"].clone();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 8, "2 normalizations x 2 batch sizes x 2 seeds");
    for run in runs {
        // Only BatchNorm has statistics that a test batch can replace.
        let batchnorm = run["model"] == "mlp-bn";
        assert_eq!(run["test_acc_batch_stats"].is_f64(), batchnorm, "{run}");
    }
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("## Over seeds"), "{md}");
    for row in ["| mlp-bn | 4 | 0.001 | 2 |", "| mlp-ln | 8 | 0.001 | 2 |"] {
        assert!(md.contains(row), "{row} not in {md}");
    }
    assert_png_shows_curves(&out.join("sweep.png"), 2);
    for (args, needle) in [
        (
            &["--norm", "ln", "--norms", "bn"][..],
            "--norm has no effect beside --norms",
        ),
        (
            &["--models", "mlp-bn", "--norms", "ln"],
            "has BatchNorm already",
        ),
        (&["--repeats", "0"], "--repeats"),
        // --norm without --models sweeps the MLP with it, which has no BatchNorm to tune.
        (
            &["--norm", "ln", "--bn-eps", "1e-3"],
            "--bn-eps has no effect: no model of this run has a BatchNorm layer",
        ),
    ] {
        assert_one_line_error(&sweep(args), 2, needle);
    }
}
