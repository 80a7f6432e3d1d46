//! `wgnorm inspect` from the command line: it flags a model whose running statistics lag its
//! weights and passes the same model recalibrated, draws its plot, and refuses a model without
//! BatchNorm in one line.

mod common;

use std::path::Path;

use common::{assert_one_line_error, shared_mnist, train_on_cpu, wgnorm, wgnorm_ok};

/// `inspect --json` of a model, with the validation gap.
fn inspect(model: &str, data: &str, dir: &Path) -> serde_json::Value {
    let args = [
        "inspect",
        "--checkpoint",
        model,
        "--data-dir",
        data,
        "--json",
    ];
    serde_json::from_slice(&wgnorm_ok(&args, dir).stdout).unwrap()
}

fn stale_flags(report: &serde_json::Value) -> Vec<bool> {
    (report["layers"].as_array().unwrap().iter())
        .map(|layer| layer["gap"]["stale"].as_bool().unwrap())
        .collect()
}

#[test]
fn inspect_flags_stale_running_statistics_and_passes_recalibrated_ones() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 100 steps at momentum 0.001 leave the running statistics 10% of the way from (0, 1).
    let stale = ["--bn-momentum", "0.001"];
    train_on_cpu(dir.path(), data, "cnn-bn", "3200", "stale", &stale);
    let stale = inspect("stale/model.safetensors", data, dir.path());
    assert_eq!(stale_flags(&stale), [true, true, true], "{stale}");
    let first = &stale["layers"][0];
    assert_eq!(first["kind"], "BatchNorm2d");
    assert_eq!(first["features"], 32);
    assert_eq!(first["batches_tracked"], 100);
    assert_eq!(stale["layers"][2]["kind"], "BatchNorm1d");

    wgnorm_ok(
        &[
            "recalibrate",
            "--device",
            "cpu",
            "--checkpoint",
            "stale/model.safetensors",
            "--batches",
            "50",
            "--data-dir",
            data,
            "--out",
            "recalibrated",
        ],
        dir.path(),
    );
    let recalibrated = inspect("recalibrated/model.safetensors", data, dir.path());
    assert_eq!(
        stale_flags(&recalibrated),
        [false, false, false],
        "{recalibrated}"
    );
    for (stale, fixed) in
        (stale["layers"].as_array().unwrap().iter()).zip(recalibrated["layers"].as_array().unwrap())
    {
        assert_eq!(stale["gamma"], fixed["gamma"], "γ is not touched");
        let gap = |layer: &serde_json::Value| layer["gap"]["relative"].as_f64().unwrap();
        assert!(gap(fixed) < gap(stale) / 3.0, "{stale} {fixed}");
    }

    // Without data: ranges only; with --plot: a PNG.
    let plain = wgnorm_ok(
        &[
            "inspect",
            "--checkpoint",
            "stale/model.safetensors",
            "--plot",
            "layers.png",
        ],
        dir.path(),
    );
    let table = String::from_utf8_lossy(&plain.stdout);
    assert!(
        table.contains("BatchNorm2d") && !table.contains("STALE"),
        "{table}"
    );
    let png = std::fs::read(dir.path().join("layers.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    train_on_cpu(dir.path(), data, "mlp", "640", "plain", &[]);
    let refused = wgnorm(
        &["inspect", "--checkpoint", "plain/model.safetensors"],
        dir.path(),
    );
    assert_one_line_error(&refused, 2, "has no BatchNorm layer to inspect");
    let pointless = wgnorm(
        &[
            "inspect",
            "--checkpoint",
            "stale/model.safetensors",
            "--dataset",
            "fashion-mnist",
        ],
        dir.path(),
    );
    assert_one_line_error(&pointless, 2, "no effect without --data-dir");
}

/// A BatchNorm after global average pooling normalizes 1×1 images: PyTorch's BatchNorm2d, though
/// each channel has one position.
#[test]
fn a_batchnorm_on_1x1_images_is_named_batchnorm2d() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let arch = "conv4k3,relu,avgpool,bn,flatten,bn,fc10";
    let train = [
        "train",
        "--device",
        "cpu",
        "--arch",
        arch,
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        "pooled",
    ];
    wgnorm_ok(&train, dir.path());
    let args = [
        "inspect",
        "--checkpoint",
        "pooled/model.safetensors",
        "--json",
    ];
    let report: serde_json::Value =
        serde_json::from_slice(&wgnorm_ok(&args, dir.path()).stdout).unwrap();
    let kinds: Vec<&str> = (report["layers"].as_array().unwrap().iter())
        .map(|layer| layer["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["BatchNorm2d", "BatchNorm1d"], "{report}");
}
