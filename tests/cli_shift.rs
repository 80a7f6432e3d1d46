//! `eval --batch-stats` and `--shift`, and `recalibrate --shift`: a BatchNorm model's test
//! accuracy with training-mode statistics, on shifted images, and after re-estimating its
//! running statistics on shifted images.

mod common;

use common::{assert_one_line_error, shared_mnist, train_on_cpu, wgnorm, wgnorm_ok};

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn batch_statistics_and_shifts_are_measured_and_recalibration_follows_the_shift() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    train_on_cpu(dir.path(), data, "mlp-bn", "2048", "bn", &[]);
    train_on_cpu(dir.path(), data, "mlp", "2048", "plain", &[]);
    let model = "bn/model.safetensors";
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--device", "cpu", "--json", "--data-dir", data];
        args.extend_from_slice(&["--checkpoint", model]);
        args.extend_from_slice(extra);
        json(&wgnorm_ok(&args, dir.path()))
    };
    let plain = eval(&["--batch-stats", "32"]);
    let stats = &plain["batch_stats"];
    assert_eq!(stats["batch"], 32);
    assert_eq!(stats["images"], 9984, "312 whole batches of 32");
    let accuracy = |v: &serde_json::Value| v["test_acc"].as_f64().unwrap();
    assert!(accuracy(stats) > 0.5 && accuracy(&plain) > 0.5, "{plain}");
    // A brightness shift moves every first-layer output by a per-channel constant, which the
    // running statistics do not know and a batch's own statistics remove.
    let shifted = eval(&["--batch-stats", "32", "--shift", "brightness:0.3"]);
    assert_eq!(shifted["shift"], "brightness:0.3");
    assert!(
        accuracy(&shifted) < accuracy(&plain) - 0.05,
        "{shifted} vs {plain}"
    );
    assert!(
        accuracy(&shifted["batch_stats"]) > accuracy(&shifted) + 0.05,
        "{shifted}"
    );

    let recalibrated = wgnorm_ok(
        &[
            "recalibrate",
            "--device",
            "cpu",
            "--json",
            "--data-dir",
            data,
            "--checkpoint",
            model,
            "--shift",
            "brightness:0.3",
            "--out",
            "recal",
        ],
        dir.path(),
    );
    let recalibrated = json(&recalibrated);
    assert_eq!(recalibrated["shift"], "brightness:0.3");
    let before = recalibrated["test_acc_before"].as_f64().unwrap();
    assert!((before - accuracy(&shifted)).abs() < 1e-9, "{recalibrated}");
    assert!(recalibrated["test_acc_after"].as_f64().unwrap() > before + 0.05);

    for (checkpoint, extra, needle) in [
        (model, &["--shift", "blur:1"][..], "expected brightness:D"),
        (model, &["--batch-stats", "1"], "batches of 2 to 10000"),
        (
            "plain/model.safetensors",
            &["--batch-stats", "32"],
            "has no BatchNorm layer",
        ),
    ] {
        let mut args = vec!["eval", "--device", "cpu", "--data-dir", data];
        args.extend_from_slice(&["--checkpoint", checkpoint]);
        args.extend_from_slice(extra);
        assert_one_line_error(&wgnorm(&args, dir.path()), 2, needle);
    }
}
