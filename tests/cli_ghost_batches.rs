//! `--bn-virtual-batch`: training takes BatchNorm's statistics per ghost batch, the checkpoint
//! keeps the setting (resume, recalibrate and eval read it), and every batch it cannot split is
//! refused in one line.

mod common;

use common::{assert_one_line_error, shared_mnist, train_cpu_run, train_on_cpu, wgnorm, wgnorm_ok};

fn final_val_loss(dir: &std::path::Path, run: &str) -> f64 {
    let text = std::fs::read_to_string(dir.join(run).join("metrics.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let epochs = json["epochs"].as_array().unwrap();
    epochs.last().unwrap()["val_loss"].as_f64().unwrap()
}

#[test]
fn ghost_batches_train_resume_and_recalibrate() {
    let Some(data) = shared_mnist() else { return };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    train_on_cpu(dir.path(), data, "bn", "6400", "plain", &[]);
    train_on_cpu(
        dir.path(),
        data,
        "bn",
        "6400",
        "ghost",
        &["--bn-virtual-batch", "8"],
    );
    assert_ne!(
        final_val_loss(dir.path(), "plain"),
        final_val_loss(dir.path(), "ghost"),
        "ghost batches of 8 trained the same model as whole batches"
    );
    // Resuming without the flag asks for another model, and says which.
    let resume = [
        "train",
        "--device",
        "cpu",
        "--model",
        "bn",
        "--epochs",
        "2",
        "--train-limit",
        "6400",
        "--data-dir",
        data,
        "--out",
        "ghost",
        "--resume",
    ];
    assert_one_line_error(
        &wgnorm(&resume, dir.path()),
        2,
        "with BatchNorm training statistics over ghost batches of 8, but",
    );
    let mut with_flag = resume.to_vec();
    with_flag.extend(["--bn-virtual-batch", "8"]);
    wgnorm_ok(&with_flag, dir.path());

    let recalibrate = |batch_size: &str, out: &str| {
        let args = [
            "recalibrate",
            "--device",
            "cpu",
            "--checkpoint",
            "ghost/model.safetensors",
            "--data-dir",
            data,
            "--batches",
            "20",
            "--batch-size",
            batch_size,
            "--out",
            out,
        ];
        wgnorm(&args, dir.path())
    };
    assert_one_line_error(
        &recalibrate("36", "odd"),
        2,
        "--batch-size 36 is not a multiple of the model's BatchNorm virtual batch of 8",
    );
    assert!(recalibrate("64", "recalibrated").status.success());
    let eval = [
        "eval",
        "--device",
        "cpu",
        "--checkpoint",
        "recalibrated/model.safetensors",
        "--data-dir",
        data,
    ];
    wgnorm_ok(&eval, dir.path());
}

#[test]
fn batches_ghost_batches_cannot_split_are_one_line_errors() {
    let Some(data) = shared_mnist() else { return };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| train_cpu_run(data, dir.path(), extra);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--bn-virtual-batch", "0"],
            "--bn-virtual-batch must be at least 1 sample, got 0",
        ),
        (
            &["--bn-virtual-batch", "12"],
            "--batch-size 32 is not a multiple of --bn-virtual-batch 12",
        ),
        (
            &["--bn-virtual-batch", "32"],
            "--bn-virtual-batch 32 has no effect at --batch-size 32",
        ),
        (
            &["--batch-size", "64", "--bn-virtual-batch", "32"],
            "the last batch of each epoch would hold 48 images (54000 training images at batch \
             size 64), not a multiple of --bn-virtual-batch 32; pass --drop-last",
        ),
        (
            &["--model", "nobn", "--bn-virtual-batch", "8"],
            "--bn-virtual-batch has no effect: no model of this run has a BatchNorm layer",
        ),
        (
            &["--bn-virtual-batch", "1"],
            "--bn-virtual-batch 1 leaves the BatchNorm at layer 1 one value per feature in each \
             ghost batch",
        ),
        (
            // A BatchNorm2d on 1×1 images has one value per feature and sample too.
            &[
                "--arch",
                "conv4k3,relu,avgpool,bn,flatten,fc10",
                "--bn-virtual-batch",
                "1",
            ],
            "the BatchNorm at layer 3 one value per feature",
        ),
    ];
    for (extra, needle) in cases {
        assert_one_line_error(&train(extra), 2, needle);
        assert!(
            !dir.path().join("run").exists(),
            "{extra:?} made the run folder"
        );
    }
}

/// A BatchNorm2d has one value per position in a sample: ghost batches of one sample still
/// give it statistics over 26×26 values per channel.
#[test]
fn ghost_batches_of_one_image_train_a_batchnorm2d() {
    let Some(data) = shared_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--device",
        "cpu",
        "--arch",
        "conv4k3,bn,relu,flatten,fc10",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--bn-virtual-batch",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        "conv",
    ];
    wgnorm_ok(&args, dir.path());
    assert!(dir.path().join("conv").join("model.safetensors").exists());
}
