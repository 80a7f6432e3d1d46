//! `wgnorm recalibrate` from the command line: a model whose running statistics were corrupted
//! gets its accuracy back on both backends with its weights untouched, and bad input is one
//! line and exit code 2.

mod common;

use std::path::Path;

use common::{
    assert_one_line_error, eval_on_cpu, gpu, shared_mnist, train_on_cpu, wgnorm, wgnorm_ok,
};
use wgnorm::checkpoint::{self, MODEL_FILE};
use wgnorm::graph::HostModel;

fn run_json(args: &[&str], dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&wgnorm_ok(args, dir).stdout).unwrap()
}

#[test]
fn recalibration_restores_a_model_whose_running_statistics_were_corrupted() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    train_on_cpu(dir.path(), data, "mlp-bn", "6400", "run", &[]);
    let original = eval_on_cpu("run/model.safetensors", data, dir.path()).0;
    let saved = checkpoint::load_model(&dir.path().join("run").join(MODEL_FILE)).unwrap();
    let mut corrupted: HostModel = saved.model.clone();
    for batchnorm in saved.spec.batchnorm_nodes() {
        let mean = corrupted
            .tensor_mut(&format!("{}.running_mean", batchnorm.name))
            .unwrap();
        mean.iter_mut().for_each(|mean| *mean += 2.0);
        let var = corrupted
            .tensor_mut(&format!("{}.running_var", batchnorm.name))
            .unwrap();
        var.iter_mut().for_each(|var| *var *= 100.0);
    }
    std::fs::create_dir(dir.path().join("corrupted")).unwrap();
    let corrupted_path = dir.path().join("corrupted").join(MODEL_FILE);
    checkpoint::save_model(
        &corrupted_path,
        &saved.spec,
        &corrupted,
        saved.epochs_done,
        wgnorm::Dtype::F32,
    )
    .unwrap();
    let broken = eval_on_cpu("corrupted/model.safetensors", data, dir.path()).0;
    assert!(broken < original - 0.2, "{broken} against {original}");

    let mut devices = vec!["cpu"];
    if gpu().is_some() {
        devices.push("gpu");
    }
    for device in devices {
        let out = format!("fixed-{device}");
        let report = run_json(
            &[
                "recalibrate",
                "--device",
                device,
                "--checkpoint",
                "corrupted/model.safetensors",
                "--batches",
                "100",
                "--data-dir",
                data,
                "--out",
                &out,
                "--json",
            ],
            dir.path(),
        );
        let before = report["test_acc_before"].as_f64().unwrap();
        let after = report["test_acc_after"].as_f64().unwrap();
        assert!(
            (before - broken).abs() < 0.003,
            "{device}: {before} {broken}"
        );
        assert!(
            (after - original).abs() < 0.005,
            "{device}: recalibrated {after}, trained {original}"
        );
        assert!(report["val_acc_after"].as_f64().unwrap() > 0.9, "{report}");
        let fixed = format!("{out}/model.safetensors");
        let scored = eval_on_cpu(&fixed, data, dir.path()).0;
        assert!((scored - after).abs() < 0.003, "{device}: {scored} {after}");
        // Only the running statistics changed.
        let fixed = checkpoint::load_model(&dir.path().join(&out).join(MODEL_FILE)).unwrap();
        let spec = &saved.spec;
        let params = |model: &HostModel| model.params(spec).unwrap().concat();
        assert_eq!(params(&fixed.model), params(&saved.model), "{device}");
        for batchnorm in spec.batchnorm_nodes() {
            let name = &batchnorm.name;
            let batches = |model: &HostModel| model.batches_tracked(name).unwrap();
            assert_eq!(batches(&fixed.model), batches(&saved.model));
            let tensor = |what: &str| fixed.model.tensor(&format!("{name}.{what}")).unwrap();
            let (mean, var) = (tensor("running_mean"), tensor("running_var"));
            assert!(mean.iter().chain(var).all(|v| v.is_finite()));
            assert!(var.iter().all(|&v| v > 0.0 && v < 50.0), "{device}");
        }
    }
}

#[test]
fn bad_recalibrations_are_refused_in_one_line() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    train_on_cpu(dir.path(), data, "mlp", "6400", "plain", &[]);
    train_on_cpu(dir.path(), data, "mlp-bn", "6400", "bn", &[]);
    let recalibrate = |checkpoint: &str, extra: &[&str]| {
        let mut args = vec![
            "recalibrate",
            "--device",
            "cpu",
            "--checkpoint",
            checkpoint,
            "--data-dir",
            data,
        ];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    let plain = recalibrate("plain/model.safetensors", &["--out", "x"]);
    assert_one_line_error(&plain, 2, "has no BatchNorm layer");
    let bn = "bn/model.safetensors";
    let zero = recalibrate(bn, &["--out", "x", "--batches", "0"]);
    assert_one_line_error(&zero, 2, "--batches must be at least 1");
    let one = recalibrate(bn, &["--out", "x", "--batch-size", "1"]);
    assert_one_line_error(&one, 2, "--batch-size must be at least 2");
    let many = recalibrate(bn, &["--out", "x", "--batches", "5000"]);
    assert_one_line_error(&many, 2, "at most 1687 batches");
    let split = recalibrate(bn, &["--out", "x", "--val-split", "1"]);
    assert_one_line_error(&split, 2, "--val-split");
    // A model already in --out is kept.
    let onto_itself = recalibrate(bn, &["--out", "bn"]);
    assert_one_line_error(&onto_itself, 2, "already exists");
    assert!(!dir.path().join("x").exists());
}

/// A model trained with ghost batches of 8 is scored with batch statistics as training
/// normalized it, over each ghost batch of 8, and both `train` and `eval --batch-stats` say so;
/// a batch that 8 does not divide is refused in one line.
#[test]
fn batch_statistics_of_a_ghost_batch_model_are_over_its_ghost_batches() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trained = wgnorm_ok(
        &[
            "train",
            "--device",
            "cpu",
            "--model",
            "mlp-bn",
            "--epochs",
            "1",
            "--train-limit",
            "3200",
            "--batch-size",
            "32",
            "--bn-virtual-batch",
            "8",
            "--data-dir",
            data,
            "--out",
            "ghost",
        ],
        dir.path(),
    );
    let said = String::from_utf8_lossy(&trained.stdout);
    assert!(
        said.contains("statistics over ghost batches of 8 (in batches of 32) instead of"),
        "{said}"
    );
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--device",
            "cpu",
            "--checkpoint",
            "ghost/model.safetensors",
            "--data-dir",
            data,
        ];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    let text = eval(&["--batch-stats", "32"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("with batch statistics over ghost batches of 8 (in batches of 32): test"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&eval(&["--batch-stats", "32", "--json"]).stdout).unwrap();
    assert_eq!(json["batch_stats"]["ghost_batch"], 8, "{json}");
    assert_eq!(json["batch_stats"]["batch"], 32, "{json}");
    let refused = eval(&["--batch-stats", "20"]);
    assert_one_line_error(
        &refused,
        2,
        "trained on ghost batches of 8, which must divide",
    );
}
