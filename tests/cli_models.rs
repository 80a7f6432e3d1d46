//! Convolutional models and early stopping from the command line: the CNN presets and `--arch`
//! stacks train on both backends and `eval` scores their checkpoints as `train` did; a
//! malformed stack is one line naming the token; `--patience` keeps the best epoch's model.

mod common;

use std::path::Path;

use common::{assert_one_line_error, gpu, shared_mnist, wgnorm};
use wgnorm::checkpoint::{self, BEST_MODEL_FILE, MODEL_FILE};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `wgnorm train` on the first `images` training images on `device`, into `out`.
fn train(
    dir: &Path,
    device: &str,
    images: &str,
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    let data = shared_mnist().unwrap();
    let mut args = vec![
        "train",
        "--device",
        device,
        "--train-limit",
        images,
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    let output = wgnorm(&args, dir);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `wgnorm eval --json --per-class` of `checkpoint` on `device`, its classes checked against
/// its total.
fn eval(dir: &Path, device: &str, checkpoint: &Path) -> serde_json::Value {
    let data = shared_mnist().unwrap();
    let output = wgnorm(
        &[
            "eval",
            "--device",
            device,
            "--json",
            "--per-class",
            "--data-dir",
            data.to_str().unwrap(),
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ],
        dir,
    );
    assert!(output.status.success(), "{output:?}");
    let scored: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let classes = scored["per_class"].as_array().unwrap();
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    let sum = |field: &str| {
        classes
            .iter()
            .map(|c| c[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("images"), 10_000);
    assert_eq!(scored["images"].as_u64(), Some(10_000), "{scored}");
    let accuracy = scored["test_acc"].as_f64().unwrap();
    assert_eq!(
        sum("correct"),
        (accuracy * 10_000.0).round() as u64,
        "{scored}"
    );
    scored
}

/// Trains `model_args` for one epoch of 64 steps on `device`, checks what metrics.json and the
/// checkpoint say about the architecture `arch`, and that `eval` scores it as `train` did.
fn trains_and_eval_reproduces_its_test_accuracy(
    device: &str,
    model_args: &[&str],
    name: &str,
    arch: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = vec!["--epochs", "1", "--no-validation"];
    extra.extend_from_slice(model_args);
    train(dir.path(), device, "2048", "run", &extra);
    let run = dir.path().join("run");
    let metrics = json(&run.join("metrics.json"));
    assert_eq!(metrics["model"], name);
    assert_eq!(metrics["arch"], arch);
    let test_acc = metrics["test_acc"].as_f64().unwrap();
    // 64 steps: far from trained, far from chance.
    assert!(test_acc > 0.5, "test accuracy {test_acc}");
    let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
    assert_eq!(saved.spec.arch(), arch);
    assert_eq!(saved.spec.batchnorm_nodes().len(), 3);
    let scored = eval(dir.path(), device, &run.join(MODEL_FILE));
    let eval_acc = scored["test_acc"].as_f64().unwrap();
    assert!(
        (eval_acc - test_acc).abs() < 1e-9,
        "eval {eval_acc} vs train's test {test_acc}"
    );
}

#[test]
fn cnn_bn_trains_on_the_cpu_and_eval_reproduces_it() {
    if shared_mnist().is_none() {
        return;
    }
    trains_and_eval_reproduces_its_test_accuracy(
        "cpu",
        &["--model", "cnn-bn"],
        "cnn-bn",
        "conv32k3p1,bn,relu,maxpool2,conv64k3p1,bn,relu,maxpool2,flatten,fc128,bn,relu,\
         dropout0.2,fc10",
    );
}

/// The preset's shape at a quarter of its width: lavapipe runs convolutions at a small fraction
/// of the CPU backend's speed, and the layers are the same.
#[test]
fn a_batchnorm_cnn_trains_on_the_gpu_and_eval_reproduces_it() {
    if shared_mnist().is_none() || gpu().is_none() {
        return;
    }
    let arch = "conv8k3p1,bn,relu,maxpool2,conv16k3p1,bn,relu,maxpool2,flatten,fc32,bn,relu,\
                dropout0.2,fc10";
    trains_and_eval_reproduces_its_test_accuracy("gpu", &["--arch", arch], "custom", arch);
}

#[test]
fn an_arch_stack_trains_with_global_average_pooling() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let arch = "conv8k3s2p1,bn,relu,conv16k3p1,bn,relu,avgpool,flatten,fc10";
    train(
        dir.path(),
        "cpu",
        "1024",
        "run",
        &["--arch", arch, "--epochs", "1", "--no-validation"],
    );
    let metrics = json(&dir.path().join("run/metrics.json"));
    assert_eq!(metrics["model"], "custom");
    assert_eq!(metrics["arch"], arch);
    assert!(metrics["test_acc"].as_f64().unwrap() > 0.15, "{metrics}");
}

#[test]
fn a_malformed_arch_is_one_line_naming_the_token() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, needle) in [
        ("conv32k3p1,bn,relu,pool2,flatten,fc10", "`pool2`"),
        ("conv32x3,flatten,fc10", "`conv32x3`"),
        ("fc128,dropout1.5,fc10", "dropout"),
        ("fc128,relu,fc7", "fc10"),
        ("conv8k3,relu,fc10", "flatten"),
        ("flatten,conv8k3,fc10", "needs images"),
        ("", "--arch is empty"),
    ] {
        let output = wgnorm(&["train", "--arch", arch, "--out", "never"], dir.path());
        assert_one_line_error(&output, 2, needle);
        assert!(!dir.path().join("never").exists());
    }
    let output = wgnorm(
        &["train", "--arch", "fc64,relu,fc10", "--hidden", "32"],
        dir.path(),
    );
    assert_one_line_error(&output, 2, "--hidden");
}

/// Malformed residual blocks: each is one line naming what is wrong, exit code 2, nothing
/// written.
#[test]
fn a_malformed_residual_arch_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, needle) in [
        (
            "conv4k3p1,res(conv4k3p1,relu,flatten,fc10",
            "a `(` is not closed",
        ),
        ("conv4k3p1,conv4k3p1),flatten,fc10", "a `)` closes nothing"),
        (
            "conv4k3p1,res(),flatten,fc10",
            "`res()`: a residual block's body has no layers",
        ),
        (
            "conv4k3p1,res(conv4k3p1|),flatten,fc10",
            "`res(conv4k3p1|)`: a residual block's shortcut has no layers",
        ),
        (
            "conv4k3p1,res(conv4k3p1,res(conv4k3p1)),flatten,fc10",
            "a residual block holds layers, not blocks",
        ),
        (
            "conv4k3p1,res(conv8k3p1),flatten,fc10",
            "the body gives 8×28×28 images but the shortcut 4×28×28 images; project the \
             shortcut with res8s<stride>(...)",
        ),
        (
            "conv4k3p1,res8s2(conv8k3p1),flatten,fc10",
            "the body gives 8×28×28 images but the shortcut 8×14×14 images",
        ),
        (
            "conv4k3p1,res32x(conv32k3p1),flatten,fc10",
            "`res32x(conv32k3p1)`: expected res(",
        ),
        (
            "conv4k3p1,res(conv4k3p1)x,flatten,fc10",
            "`res(conv4k3p1)x`: expected res(",
        ),
        ("conv4k3p1,res(conv4k3p1,pool2),flatten,fc10", "`pool2`"),
    ] {
        let output = wgnorm(&["train", "--arch", arch, "--out", "never"], dir.path());
        assert_one_line_error(&output, 2, needle);
        assert!(!dir.path().join("never").exists());
    }
}

/// Sizes whose arithmetic would pass what a usize holds or a kernel's u32 indexes: each is
/// refused in one line before anything is written.
#[test]
fn arch_sizes_past_what_a_kernel_indexes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, needle) in [
        // 28 + 2·padding wraps to 26, and the run trained a Linear(2304, 10).
        (
            "conv4k3p9223372036854775807,flatten,fc10",
            "padding 9223372036854775807 over a 28×28 image passes the 2^32 positions",
        ),
        (
            "conv4k3s18446744073709551615,flatten,fc10",
            "stride 18446744073709551615",
        ),
        (
            "conv4k4294967296p2147483648,flatten,fc10",
            "padding 2147483648",
        ),
        (
            "conv2147483648k1,avgpool,flatten,fc10",
            "2147483648×28×28 images hold more than the 2^32 values",
        ),
        // A 60000×60000 kernel over the padded image: 29×29 patches of 3.6e9 values each.
        ("conv1k60000p30000,avgpool,flatten,fc10", "patches"),
    ] {
        let output = wgnorm(&["train", "--arch", arch, "--out", "never"], dir.path());
        assert_one_line_error(&output, 2, needle);
        assert!(!dir.path().join("never").exists());
    }
}

/// A model.safetensors whose metadata says `architecture`, with no tensors: reading it stops at
/// the architecture.
fn crafted_model(path: &Path, architecture: &str) {
    let metadata = std::collections::HashMap::from([
        ("format".to_string(), "wgnorm-mlp-1".to_string()),
        ("architecture".to_string(), architecture.to_string()),
        ("torch_module".to_string(), "nn.Sequential()".to_string()),
        ("epochs_done".to_string(), "1".to_string()),
    ]);
    let tensors: [(&str, safetensors::tensor::TensorView); 0] = [];
    safetensors::tensor::serialize_to_file(tensors, Some(metadata), path).unwrap();
}

/// Checkpoint metadata naming sizes past a kernel's indexing, or a malformed residual block, is
/// refused in one line naming the metadata and the fault, before anything is written.
#[test]
fn malformed_checkpoint_metadata_is_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#""batchnorm_config":{"eps":1e-5,"momentum":0.1,"unbiased_running_var":true}"#;
    for (name, input, layers, needle) in [
        (
            "padding",
            r#"{"image":{"channels":1,"height":28,"width":28}}"#,
            "conv4k3p9223372036854775807,flatten,fc10",
            "padding 9223372036854775807",
        ),
        (
            "input",
            r#"{"image":{"channels":4294967296,"height":4294967296,"width":4294967296}}"#,
            "avgpool,flatten,fc10",
            "4294967296×4294967296×4294967296 images hold more than the 2^32 values",
        ),
        // Malformed residual blocks.
        (
            "unclosed",
            r#"{"image":{"channels":1,"height":28,"width":28}}"#,
            "conv4k3p1,res(conv4k3p1,flatten,fc10",
            "a `(` is not closed",
        ),
        (
            "nested",
            r#"{"image":{"channels":1,"height":28,"width":28}}"#,
            "res(conv1k3p1,res(conv1k3p1)),flatten,fc10",
            "not blocks",
        ),
        (
            "empty",
            r#"{"image":{"channels":1,"height":28,"width":28}}"#,
            "conv4k3p1,res(),flatten,fc10",
            "body has no layers",
        ),
        (
            "shape",
            r#"{"image":{"channels":1,"height":28,"width":28}}"#,
            "conv4k3p1,res(conv8k3p1),flatten,fc10",
            "res8s<stride>",
        ),
    ] {
        let model = dir.path().join(format!("{name}.safetensors"));
        crafted_model(
            &model,
            &format!(r#"{{"input":{input},"layers":"{layers}",{config}}}"#),
        );
        let output = wgnorm(
            &[
                "export",
                "--checkpoint",
                model.to_str().unwrap(),
                "--onnx",
                "out.onnx",
            ],
            dir.path(),
        );
        assert_one_line_error(&output, 2, needle);
        assert_one_line_error(&output, 2, "architecture metadata");
        assert!(!dir.path().join("out.onnx").exists());
    }
}

#[test]
fn patience_keeps_the_best_epoch_and_stops_by_the_rule() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A high rate on few images: the validation loss soon stops falling.
    let output = train(
        dir.path(),
        "cpu",
        "1024",
        "run",
        &["--patience", "1", "--epochs", "6", "--lr", "0.02"],
    );
    let run = dir.path().join("run");
    let metrics = json(&run.join("metrics.json"));
    let losses: Vec<f64> = metrics["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect();
    let best = (0..losses.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
        .unwrap()
        + 1;
    assert_eq!(metrics["best_epoch"], best, "{losses:?}");
    assert_eq!(metrics["settings"]["patience"], 1);
    // Trained on while the loss fell, and not an epoch past the first rise.
    let ran = losses.len();
    assert!(ran == 6 || ran == best + 1, "ran {ran} epochs, best {best}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.contains("early stop after epoch"),
        ran < 6,
        "{stdout}"
    );
    let kept = checkpoint::load_model(&run.join(BEST_MODEL_FILE)).unwrap();
    assert_eq!(kept.epochs_done, best);
    assert_eq!(
        checkpoint::load_model(&run.join(MODEL_FILE))
            .unwrap()
            .epochs_done,
        ran
    );
    let scored = eval(dir.path(), "cpu", &run.join(BEST_MODEL_FILE));
    assert_eq!(scored["epochs_done"], best);

    let refused = wgnorm(
        &["train", "--patience", "2", "--no-validation", "--out", "x"],
        dir.path(),
    );
    assert_one_line_error(&refused, 2, "--patience has no effect with --no-validation");
    let zero = wgnorm(&["train", "--patience", "0"], dir.path());
    assert_one_line_error(&zero, 2, "--patience");
}

#[test]
fn a_batch_over_the_binding_limit_is_refused_naming_the_batch_that_fits() {
    if shared_mnist().is_none() || gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = shared_mnist().unwrap();
    // 4096 channels at 28×28: 12.8 MB a sample, so 1024 samples pass any 4 GiB binding.
    let output = wgnorm(
        &[
            "train",
            "--device",
            "gpu",
            "--arch",
            "conv4096k3p1,flatten,fc10",
            "--batch-size",
            "1024",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "run",
        ],
        dir.path(),
    );
    assert_one_line_error(&output, 2, "max_storage_buffer_binding_size");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a batch of 1024"), "{stderr}");
    assert!(stderr.contains("or less"), "{stderr}");
    assert!(!dir.path().join("run").exists());
}
