//! `wgnorm train` and `wgnorm eval` as a user runs them: metrics and checkpoint files, resume,
//! evaluation of the saved model, and one-line errors for bad flags and files.

mod common;

use std::path::Path;

use common::{
    assert_one_line_error, gpu, shared_mnist, spawn_wgnorm, train_cpu_run, wgnorm, wgnorm_command,
};
use wgnorm::checkpoint::{self, MODEL_FILE, STATE_FILE};
use wgnorm::graph::ModelSpec;

/// A quick CPU run: the first 640 images, 2 epochs of 20 steps.
fn train(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let data = shared_mnist().unwrap();
    let mut args = vec![
        "train",
        "--device",
        "cpu",
        "--train-limit",
        "640",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    wgnorm(&args, dir)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn train_writes_metrics_and_a_checkpoint_that_eval_reproduces() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = train(dir.path(), "run", &["--epochs", "2", "--seed", "4"]);
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("epoch 2/2  train loss"), "{stdout}");
    let run = dir.path().join("run");

    let metrics = json(&run.join("metrics.json"));
    assert_eq!(metrics["model"], "mlp-bn");
    assert_eq!(metrics["arch"], "fc128,bn,relu,dropout0.2,fc10");
    assert_eq!(metrics["device"], "cpu");
    assert_eq!(metrics["batch_size"], 32);
    assert_eq!(metrics["seed"], 4);
    let epochs = metrics["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for key in [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "seconds",
        "training_seconds",
    ] {
        assert!(epochs[1][key].is_number(), "{key} missing: {}", epochs[1]);
    }
    // The training steps are a part of the epoch, validation the rest.
    let (all, training) = (
        epochs[1]["seconds"].as_f64(),
        epochs[1]["training_seconds"].as_f64(),
    );
    assert!(0.0 < training.unwrap() && training < all, "{}", epochs[1]);
    let test_acc = metrics["test_acc"].as_f64().unwrap();
    assert!(test_acc > 0.8, "test accuracy {test_acc}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(
        csv.starts_with(
            "epoch,train_loss,train_acc,val_loss,val_acc,seconds,training_seconds,lr\n"
        )
    );

    // The state_dict of the equivalent torch.nn.Sequential.
    let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
    assert_eq!(saved.epochs_done, 2);
    assert_eq!(
        saved.spec.torch_module(),
        "nn.Sequential(nn.Linear(784, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2), \
         nn.Linear(128, 10))"
    );
    let names: Vec<String> = saved.spec.params().iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        [
            "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"
        ]
    );
    assert_eq!(saved.model.batches_tracked("1").unwrap(), 40);
    assert!(
        (saved.model.tensor("1.running_var").unwrap())
            .iter()
            .all(|&v| v > 0.0 && v != 1.0)
    );

    // Saving what was loaded gives the same tensors back.
    let copy = dir.path().join("copy.safetensors");
    checkpoint::save_model(
        &copy,
        &saved.spec,
        &saved.model,
        saved.epochs_done,
        wgnorm::Dtype::F32,
    )
    .unwrap();
    assert_eq!(checkpoint::load_model(&copy).unwrap().model, saved.model);

    let data = shared_mnist().unwrap();
    let model_path = run.join(MODEL_FILE);
    let eval = |device: &str| {
        let output = wgnorm(
            &[
                "eval",
                "--checkpoint",
                model_path.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--device",
                device,
                "--json",
            ],
            dir.path(),
        );
        assert_success(&output);
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        value["test_acc"].as_f64().unwrap()
    };
    assert_eq!(
        eval("cpu"),
        test_acc,
        "eval of the saved model differs from train's test"
    );
    if gpu().is_some() {
        let on_gpu = eval("gpu");
        assert!(
            (on_gpu - test_acc).abs() <= 0.003,
            "GPU eval {on_gpu} vs CPU {test_acc}"
        );
    }
}

fn same_tensors(a: &Path, b: &Path) {
    same_tensors_in(a, b, MODEL_FILE);
}

/// The model files `file` of runs `a` and `b` hold the same tensors, bit for bit.
fn same_tensors_in(a: &Path, b: &Path, file: &str) {
    let (a, b) = (
        checkpoint::load_model(&a.join(file)).unwrap(),
        checkpoint::load_model(&b.join(file)).unwrap(),
    );
    assert_eq!(a.epochs_done, b.epochs_done);
    let bits = |m: &wgnorm::graph::HostModel| -> Vec<(String, Vec<u32>)> {
        m.tensors()
            .map(|(name, p)| (name.to_string(), p.iter().map(|v| v.to_bits()).collect()))
            .collect()
    };
    assert_eq!(bits(&a.model), bits(&b.model), "tensors differ");
    assert_eq!(a.model, b.model, "batch counts differ");
}

fn same_optimizer_state(a: &Path, b: &Path, spec: &ModelSpec) {
    let names = ["exp_avg", "exp_avg_sq"];
    let a = checkpoint::load_state(&a.join(STATE_FILE), spec, &names).unwrap();
    let b = checkpoint::load_state(&b.join(STATE_FILE), spec, &names).unwrap();
    assert_eq!(a.optimizer_steps, b.optimizer_steps);
    assert_eq!(a.optimizer, b.optimizer, "optimizer state differs");
}

#[test]
fn resuming_ends_with_the_weights_of_an_uninterrupted_run() {
    if shared_mnist().is_none() {
        return;
    }
    resumes_exactly(&[]);
    // A convolutional stack, with early stopping watching (and keeping its best epoch).
    resumes_exactly(&[
        "--arch",
        "conv4k3p1,bn,relu,maxpool2,flatten,fc16,bn,relu,dropout0.2,fc10",
        "--patience",
        "5",
    ]);
}

/// A residual net (an identity block with dropout in its body and after it, a projected
/// block with stride 2) resumes as the presets do.
#[test]
fn resuming_a_residual_net_ends_with_the_weights_of_an_uninterrupted_run() {
    if shared_mnist().is_none() {
        return;
    }
    resumes_exactly(&[
        "--arch",
        "conv4k3s2p1,bn,relu,res(conv4k3p1,bn,relu,dropout0.2,conv4k3p1,bn),dropout0.2,\
         res8s2(conv8k3s2p1,bn,relu,conv8k3p1,bn),avgpool,flatten,fc10",
    ]);
}

/// Three epochs at once, and one then two more by --resume, with `extra` flags: the same
/// tensors, optimizer state and metrics, bit for bit.
fn resumes_exactly(extra: &[&str]) {
    let with = |flags: &[&'static str]| -> Vec<&str> { [flags, extra].concat() };
    let dir = tempfile::tempdir().unwrap();
    assert_success(&train(
        dir.path(),
        "whole",
        &with(&["--epochs", "3", "--seed", "8"]),
    ));
    assert_success(&train(
        dir.path(),
        "parts",
        &with(&["--epochs", "1", "--seed", "8"]),
    ));
    // Stopped after epoch 1, continued to 2, then to 3.
    for epochs in ["2", "3"] {
        let output = train(
            dir.path(),
            "parts",
            &[&["--epochs", epochs, "--seed", "8", "--resume"], extra].concat(),
        );
        assert_success(&output);
        assert!(String::from_utf8_lossy(&output.stderr).contains("resuming after epoch"));
    }
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    same_tensors(&whole, &parts);
    let kept_best = whole.join(checkpoint::BEST_MODEL_FILE).exists();
    assert_eq!(kept_best, extra.contains(&"--patience"));
    if kept_best {
        same_tensors_in(&whole, &parts, checkpoint::BEST_MODEL_FILE);
    }
    let spec = checkpoint::load_model(&whole.join(MODEL_FILE))
        .unwrap()
        .spec;
    same_optimizer_state(&whole, &parts, &spec);
    let (a, b) = (
        json(&whole.join("metrics.json")),
        json(&parts.join("metrics.json")),
    );
    assert_eq!(b["epochs"].as_array().unwrap().len(), 3);
    assert_eq!(a["test_acc"], b["test_acc"]);
    for epoch in 0..3 {
        for measure in ["train_loss", "val_loss", "val_acc"] {
            assert_eq!(a["epochs"][epoch][measure], b["epochs"][epoch][measure]);
        }
    }
}

/// A learning-rate schedule: the rate of every epoch in metrics.json as PyTorch's scheduler
/// gives it; a resumed step schedule ends as an uninterrupted one; a cosine schedule, spread over
/// the run's length, refuses to resume into another length.
#[test]
fn schedules_record_their_rates_and_resume_exactly() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert_success(&train(
        dir.path(),
        "cosine",
        &["--epochs", "3", "--lr-schedule", "cosine", "--lr", "0.002"],
    ));
    let rates: Vec<f64> = json(&dir.path().join("cosine/metrics.json"))["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["lr"].as_f64().unwrap())
        .collect();
    let pi = std::f64::consts::PI;
    let expected = [
        0.002,
        0.001 * (1.0 + (pi / 3.0).cos()),
        0.001 * (1.0 + (2.0 * pi / 3.0).cos()),
    ];
    for (rate, want) in rates.iter().zip(expected) {
        assert!((rate - want).abs() < 1e-12, "{rates:?}");
    }
    let cosine_more = train(
        dir.path(),
        "cosine",
        &[
            "--epochs",
            "4",
            "--lr-schedule",
            "cosine",
            "--lr",
            "0.002",
            "--resume",
        ],
    );
    assert_one_line_error(&cosine_more, 2, "epochs: 3 in the run, 4 now");

    let step = [
        "--lr-schedule",
        "step",
        "--lr-step-every",
        "1",
        "--lr-gamma",
        "0.5",
    ];
    let with = |epochs: &'static str, resume: bool| {
        let mut args = vec!["--epochs", epochs, "--seed", "4"];
        args.extend_from_slice(&step);
        if resume {
            args.push("--resume");
        }
        args
    };
    assert_success(&train(dir.path(), "whole", &with("3", false)));
    assert_success(&train(dir.path(), "parts", &with("1", false)));
    assert_success(&train(dir.path(), "parts", &with("3", true)));
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    same_tensors(&whole, &parts);
    let (a, b) = (
        json(&whole.join("metrics.json")),
        json(&parts.join("metrics.json")),
    );
    for epoch in 0..3 {
        assert_eq!(a["epochs"][epoch]["lr"], 1e-3 * 0.5f64.powi(epoch as i32));
        assert_eq!(
            a["epochs"][epoch]["train_loss"],
            b["epochs"][epoch]["train_loss"]
        );
    }
}

#[test]
fn bad_flags_and_files_are_one_line_errors() {
    let Some(data) = shared_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = data.to_str().unwrap();
    let base = ["train", "--device", "cpu", "--data-dir", data];
    let with = |extra: &[&str]| train_cpu_run(data, dir.path(), extra);
    let clap_error = |output: &std::process::Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "'{needle}' not in {stderr}");
    };
    clap_error(&with(&["--model", "resnet"]), "resnet");
    clap_error(&with(&["--batch-size", "many"]), "batch-size");
    clap_error(&with(&["--hidden", "128,x"]), "hidden");
    clap_error(&wgnorm(&["train", "--resume"], dir.path()), "--out");
    assert_one_line_error(&with(&["--batch-size", "0"]), 2, "batch size");
    assert_one_line_error(&with(&["--dropout", "1.5"]), 2, "dropout");
    assert_one_line_error(&with(&["--hidden", "0"]), 2, "widths");
    assert_one_line_error(&with(&["--lr", "-1"]), 2, "lr");
    assert_one_line_error(
        &with(&["--val-split", "1"]),
        2,
        "--val-split must be in (0, 1)",
    );
    assert_one_line_error(&with(&["--resume"]), 2, "no run to continue");
    assert_one_line_error(&with(&["--epochs", "0"]), 2, "epochs must be at least 1");
    assert_one_line_error(
        &with(&["--lr", "0"]),
        2,
        "--lr must be a positive finite number",
    );
    assert_one_line_error(
        &with(&["--lr", "NaN"]),
        2,
        "--lr must be a positive finite number",
    );
    assert_one_line_error(
        &with(&["--lr", "inf"]),
        2,
        "--lr must be a positive finite number",
    );
    assert_one_line_error(&with(&["--dropout", "-0.1"]), 2, "dropout");
    assert_one_line_error(
        &with(&["--val-split", "-0.5"]),
        2,
        "--val-split must be in (0, 1)",
    );
    assert_one_line_error(&with(&["--val-split", "0"]), 2, "pass --no-validation");
    clap_error(
        &with(&["--no-validation", "--val-split", "0.2"]),
        "--no-validation",
    );
    assert_one_line_error(&with(&["--hidden", "64,0"]), 2, "widths");
    assert_one_line_error(
        &with(&["--hidden", "18446744073709551615"]),
        2,
        "0.weight of shape [18446744073709551615, 784] exceeds the 2^32 elements",
    );
    // 5M units: 4.0e9 parameters, 64 GB with gradients and Adam's moments, refused before any
    // allocation (an allocation failure would abort); machines with that much memory free
    // would train it, so they skip this one.
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info
                .lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
    if available.is_some_and(|kib| kib < 60 << 20) {
        assert_one_line_error(
            &with(&["--hidden", "5000000"]),
            2,
            "3985000010 parameters need 59.4 GiB of host memory (4 copies of the weights)",
        );
    }
    clap_error(
        &wgnorm(&["train", "--device", "tpu", "--out", "tpu"], dir.path()),
        "tpu",
    );
    assert_one_line_error(
        &with(&["--train-limit", "100", "--batch-size", "101"]),
        2,
        "batch size 101 exceeds the 100 training images",
    );
    // 65 images at batch 32 leave a last batch of one, which BatchNorm cannot normalize.
    let lonely = ["--train-limit", "65", "--epochs", "1"];
    let mut args = lonely.to_vec();
    args.push("--batch-size=32");
    let output = with(&args);
    assert_one_line_error(
        &output,
        2,
        "the last batch of each epoch would hold 1 image",
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--drop-last"));
    args.push("--drop-last");
    let output = wgnorm(
        &[&base[..5], &["--out", "dropped"], &args[..]].concat(),
        dir.path(),
    );
    assert_success(&output);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("2 steps per epoch"), "{said}");

    // --no-validation trains without a held-out part: no validation figures are recorded.
    let output = wgnorm(
        &[
            &base[..5],
            &[
                "--out",
                "all",
                "--no-validation",
                "--train-limit",
                "64",
                "--epochs",
                "1",
            ],
        ]
        .concat(),
        dir.path(),
    );
    assert_success(&output);
    let metrics = json(&dir.path().join("all").join("metrics.json"));
    assert!(metrics["epochs"][0]["val_loss"].is_null(), "{metrics}");
    assert_eq!(metrics["settings"]["val_split"], 0.0, "{metrics}");

    let bad_data = dir.path().join("empty");
    std::fs::create_dir(&bad_data).unwrap();
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(bad_data.join(name), b"not idx").unwrap();
    }
    let output = wgnorm(
        &[
            "train",
            "--device",
            "cpu",
            "--data-dir",
            bad_data.to_str().unwrap(),
            "--out",
            "x",
        ],
        dir.path(),
    );
    assert_one_line_error(&output, 2, "train-images-idx3-ubyte");

    // A finished run is never overwritten, and resuming needs the same settings.
    let run_args = ["--train-limit", "64", "--epochs", "1"];
    assert_success(&with(&run_args));
    let model = dir.path().join("run").join(MODEL_FILE);
    let saved = std::fs::read(&model).unwrap();
    assert_one_line_error(&with(&run_args), 2, "already holds a run");
    let mut other = run_args.to_vec();
    other.extend_from_slice(&["--lr", "0.01", "--resume"]);
    assert_one_line_error(
        &with(&other),
        2,
        "other settings (optimizer.adam.lr: 0.001 in the run, 0.01 now)",
    );
    let mut other = run_args.to_vec();
    other.extend_from_slice(&["--optimizer", "sgd", "--resume"]);
    assert_one_line_error(&with(&other), 2, "other settings");
    let mut other = run_args.to_vec();
    other.extend_from_slice(&["--hidden", "64", "--resume"]);
    assert_one_line_error(
        &with(&other),
        2,
        "holds nn.Sequential(nn.Linear(784, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2), \
         nn.Linear(128, 10)), but nn.Sequential(nn.Linear(784, 64)",
    );
    assert_eq!(
        std::fs::read(&model).unwrap(),
        saved,
        "the saved model was changed"
    );

    let eval = |checkpoint: &Path| {
        wgnorm(
            &[
                "eval",
                "--checkpoint",
                checkpoint.to_str().unwrap(),
                "--data-dir",
                data,
                "--device",
                "cpu",
            ],
            dir.path(),
        )
    };
    assert_one_line_error(
        &eval(&dir.path().join("missing.safetensors")),
        2,
        "missing.safetensors",
    );
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &saved[..saved.len() / 2]).unwrap();
    assert_one_line_error(&eval(&truncated), 2, "not a safetensors file");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}       ",
    )
    .unwrap();
    assert_one_line_error(&eval(&garbage), 2, "garbage.safetensors");
    // A valid safetensors file from another program: tensors, but not a wgnorm model.
    let foreign = dir.path().join("foreign.safetensors");
    let weights = [0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &weights)
        .unwrap();
    safetensors::tensor::serialize_to_file([("fc.weight", view)], None, &foreign).unwrap();
    assert_one_line_error(&eval(&foreign), 2, "its metadata has no \"format\"");
}

#[test]
fn export_dtype_f16_writes_a_half_size_model_that_eval_reads() {
    let Some(data) = shared_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        dir.path(),
        "run",
        &["--epochs", "1", "--export-dtype", "f16"],
    );
    assert_success(&output);
    let run = dir.path().join("run");
    let f32_file = run.join(MODEL_FILE);
    let f16_file = run.join(checkpoint::F16_MODEL_FILE);
    let (f32_bytes, f16_bytes) = (
        std::fs::metadata(&f32_file).unwrap().len(),
        std::fs::metadata(&f16_file).unwrap().len(),
    );
    assert!(
        f16_bytes * 100 < f32_bytes * 52,
        "f16 file {f16_bytes} bytes vs f32 {f32_bytes}"
    );
    // Every value is the f32 one rounded to the nearest f16; the counters stay exact.
    let full = checkpoint::load_model(&f32_file).unwrap();
    let half = checkpoint::load_model(&f16_file).unwrap();
    assert_eq!(half.spec, full.spec);
    for ((name, h), (_, f)) in half.model.tensors().zip(full.model.tensors()) {
        let rounded: Vec<f32> = f.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_eq!(h, &rounded[..], "{name}");
    }
    assert_eq!(
        half.model.batches_tracked("1").unwrap(),
        full.model.batches_tracked("1").unwrap()
    );
    let output = wgnorm(
        &[
            "eval",
            "--checkpoint",
            f16_file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ],
        dir.path(),
    );
    assert_success(&output);
    let f16_acc = serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()["test_acc"]
        .as_f64()
        .unwrap();
    let f32_acc = json(&run.join("metrics.json"))["test_acc"]
        .as_f64()
        .unwrap();
    assert!(
        (f16_acc - f32_acc).abs() <= 0.005,
        "f16 model {f16_acc} vs f32 {f32_acc}"
    );

    // Inference in half precision: f16 weights and activations on the GPU.
    let Some(gpu) = gpu() else { return };
    let output = wgnorm(
        &[
            "eval",
            "--checkpoint",
            f32_file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--device",
            "gpu",
            "--dtype",
            "f16",
            "--json",
        ],
        dir.path(),
    );
    assert_success(&output);
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).contains("evaluating in F32"),
        !gpu.has_f16()
    );
    let half_inference =
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()["test_acc"]
            .as_f64()
            .unwrap();
    assert!(
        (half_inference - f32_acc).abs() <= 0.005,
        "f16 inference {half_inference} vs f32 {f32_acc}"
    );
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_saves_nothing_half_done() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        dir.path(),
        "run",
        &[
            "--model",
            "nobn",
            "--optimizer",
            "sgd",
            "--lr",
            "1e6",
            "--epochs",
            "3",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The progress header, then one error line.
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the training loss was not finite at step"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error").count(), 1, "{stderr}");
    // The step is named exactly: a whole number within the epoch's 20 steps.
    let step: usize = stderr
        .split("at step ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((1..=20).contains(&step), "{stderr}");
    let run = dir.path().join("run");
    if stderr.contains("of epoch 1;") {
        assert!(!run.join(MODEL_FILE).exists(), "a model was saved");
    } else {
        // A later epoch diverged: the model on disk is the last finished epoch's, and loads.
        let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
        assert!(saved.epochs_done >= 1);
    }
}

/// `wgnorm train` on the CPU as a child process, for killing.
fn spawn_train(dir: &Path, out: &str, extra: &[&str]) -> std::process::Child {
    let data = shared_mnist().unwrap();
    let mut args = vec![
        "train",
        "--device",
        "cpu",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    spawn_wgnorm(&args, dir)
}

/// Waits until `path` exists (or the child has exited); false if the child exited first.
fn wait_for(child: &mut std::process::Child, path: &Path) -> bool {
    let started = std::time::Instant::now();
    while !path.exists() {
        if child.try_wait().unwrap().is_some() {
            return path.exists();
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    true
}

/// kill -9 at many points (during epochs and around checkpoint writes), each time a model file
/// on disk must load whole; resuming after every kill ends bit-identical to a run never killed.
#[test]
fn kill_9_at_any_point_then_resume_ends_as_an_uninterrupted_run() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = ["--train-limit", "12000", "--epochs", "4", "--seed", "5"];
    assert_success(
        &spawn_train(dir.path(), "whole", &args)
            .wait_with_output()
            .unwrap(),
    );
    let killed = dir.path().join("killed");
    let mut resume = args.to_vec();
    resume.push("--resume");
    let mut kills = 0;
    for delay_ms in [0, 3, 11, 29, 57, 97, 150] {
        let started = killed.join(MODEL_FILE).exists();
        let mut child = spawn_train(dir.path(), "killed", if started { &resume } else { &args });
        // Let it run into an epoch (or a write) before killing it.
        if wait_for(&mut child, &killed.join("metrics.csv")) || started {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        if killed.join(MODEL_FILE).exists() {
            let saved = checkpoint::load_model(&killed.join(MODEL_FILE));
            assert!(saved.is_ok(), "a half-written model: {:?}", saved.err());
        }
        // No temporary file is left where a user would mistake it for a model.
        for entry in std::fs::read_dir(&killed).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            assert!(
                !name.ends_with(".safetensors") || name == MODEL_FILE || name == STATE_FILE,
                "{name}"
            );
        }
    }
    assert!(kills >= 3, "only {kills} kills landed");
    let started = killed.join(MODEL_FILE).exists();
    let output = spawn_train(dir.path(), "killed", if started { &resume } else { &args })
        .wait_with_output()
        .unwrap();
    assert_success(&output);
    same_tensors(&dir.path().join("whole"), &killed);
}

#[test]
fn ctrl_c_stops_training_after_the_step_and_resume_finishes_it() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = ["--train-limit", "40000", "--epochs", "3", "--seed", "6"];
    let run = dir.path().join("run");
    let mut child = spawn_train(dir.path(), "run", &args);
    assert!(
        wait_for(&mut child, &run.join(MODEL_FILE)),
        "the run ended before epoch 1 was saved"
    );
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let saved = checkpoint::load_model(&run.join(MODEL_FILE)).unwrap();
    assert!(
        (1..3).contains(&saved.epochs_done),
        "{} epochs saved",
        saved.epochs_done
    );
    let mut resume = args.to_vec();
    resume.push("--resume");
    assert_success(
        &spawn_train(dir.path(), "run", &resume)
            .wait_with_output()
            .unwrap(),
    );
    assert_success(
        &spawn_train(dir.path(), "whole", &args)
            .wait_with_output()
            .unwrap(),
    );
    same_tensors(&dir.path().join("whole"), &run);
}

/// A short version of the 50-epoch run at batch 256 on the GPU: after the first epoch neither
/// the device buffers nor the resident memory grow (both are recorded per epoch).
#[test]
fn device_buffers_and_resident_memory_stay_flat_after_the_first_epoch() {
    let Some(data) = shared_mnist() else { return };
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = wgnorm(
        &[
            "train",
            "--device",
            "gpu",
            "--train-limit",
            "2048",
            "--batch-size",
            "256",
            "--epochs",
            "6",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "run",
        ],
        dir.path(),
    );
    assert_success(&output);
    let metrics = json(&dir.path().join("run").join("metrics.json"));
    let epochs = metrics["epochs"].as_array().unwrap();
    let buffers: Vec<u64> = epochs
        .iter()
        .map(|e| e["device_buffers"].as_u64().unwrap())
        .collect();
    assert!(buffers[0] > 0);
    assert!(
        buffers[1..].iter().all(|&b| b == buffers[1]),
        "device buffers per epoch: {buffers:?}"
    );
    let resident: Vec<u64> = epochs
        .iter()
        .map(|e| e["resident_bytes"].as_u64().unwrap())
        .collect();
    let growth = resident[5].saturating_sub(resident[1]);
    assert!(
        growth < 16 << 20,
        "resident memory grew by {growth} bytes from epoch 2 to 6: {resident:?}"
    );
}

/// A GPU lost mid-run (the test-only fault destroys the device after wgnorm's 45th submission,
/// in the second of three epochs here): one line naming the epoch and what was kept, exit 1,
/// the saved epoch loads whole, and `--resume` on a working device finishes the run.
#[test]
fn a_device_lost_mid_run_keeps_the_finished_epochs_for_resume() {
    let Some(data) = shared_mnist() else { return };
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--device",
        "gpu",
        "--train-limit",
        "640",
        "--epochs",
        "3",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        "run",
    ];
    let output = wgnorm_command(&args, dir.path())
        .env("WGNORM_FAULT_LOSE_DEVICE_AT_SUBMIT", "45")
        .output()
        .unwrap();
    assert_one_line_error(&output, 1, "GPU device lost");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let kept = (1..3)
        .find(|done| {
            stderr.contains(&format!(
                "in epoch {}; run holds epoch {done}; continue with --resume",
                done + 1
            ))
        })
        .unwrap_or_else(|| panic!("no finished epoch named in: {stderr}"));
    let saved = checkpoint::load_model(&dir.path().join("run").join(MODEL_FILE)).unwrap();
    assert_eq!(saved.epochs_done, kept);

    let mut resume = args.to_vec();
    resume.push("--resume");
    assert_success(&wgnorm(&resume, dir.path()));
    let metrics = json(&dir.path().join("run").join("metrics.json"));
    assert_eq!(metrics["epochs"].as_array().unwrap().len(), 3, "{metrics}");
    assert!(metrics["test_acc"].as_f64().unwrap() > 0.5, "{metrics}");
}

/// A first layer wider than one storage binding can hold is refused before any dispatch, naming
/// the adapter's limit (on adapters whose limit would need more than 512 MiB, not tried).
#[test]
fn a_layer_beyond_the_adapter_binding_limit_is_refused_naming_it() {
    let Some(data) = shared_mnist() else { return };
    let Some(gpu) = gpu() else { return };
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let bytes_per_unit = (784 * std::mem::size_of::<f32>()) as u64;
    let hidden = limit / bytes_per_unit + 1;
    if hidden * bytes_per_unit > 512 << 20 {
        eprintln!("skipped: a binding limit of {limit} bytes needs too large a model to exceed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hidden = hidden.to_string();
    let output = wgnorm(
        &[
            "train",
            "--device",
            "gpu",
            "--hidden",
            &hidden,
            "--train-limit",
            "64",
            "--epochs",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "wide",
        ],
        dir.path(),
    );
    assert_one_line_error(
        &output,
        2,
        &format!("exceeds the adapter's max_storage_buffer_binding_size of {limit} bytes"),
    );
    assert!(!dir.path().join("wide").join(MODEL_FILE).exists());
}
