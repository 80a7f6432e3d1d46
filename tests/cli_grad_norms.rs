//! `--log-grad-norms N`: every N-th step's gradient norms land in metrics.json and
//! grad_norms.png, the same on both backends; N = 0 is refused.

mod common;

use common::{assert_one_line_error, assert_png_shows_curves, gpu, shared_mnist, wgnorm};

/// One epoch of 20 steps of a two-hidden-layer BatchNorm MLP on `device`, logging every 5th
/// step: metrics.json's epochs.
fn logged_epoch(device: &str) -> serde_json::Value {
    let data = shared_mnist().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--device",
        device,
        "--model",
        "mlp-bn",
        "--hidden",
        "64,32",
        "--epochs",
        "1",
        "--train-limit",
        "640",
        "--log-grad-norms",
        "5",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        "run",
    ];
    let output = wgnorm(&args, dir.path());
    assert!(output.status.success(), "{output:?}");
    let run = dir.path().join("run");
    assert_png_shows_curves(&run.join("grad_norms.png"), 2);
    let text = std::fs::read_to_string(run.join("metrics.json")).unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(metrics["grad_norm_every"], 5);
    let names: Vec<&str> = (metrics["grad_norm_names"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias", "5.weight", "5.bias",
            "8.weight", "8.bias", "4.input", "8.input"
        ]
    );
    metrics["epochs"][0]["grad_norms"].clone()
}

#[test]
fn every_nth_step_is_logged_alike_on_both_backends() {
    if shared_mnist().is_none() {
        return;
    }
    let cpu = logged_epoch("cpu");
    let records = cpu.as_array().unwrap();
    let steps: Vec<u64> = records
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 5, 10, 15]);
    for record in records {
        let norms = record["norms"].as_array().unwrap();
        assert_eq!(norms.len(), 12);
        // The bias before BatchNorm has no effect on the loss: its gradient is (nearly) 0.
        for (at, norm) in norms.iter().enumerate() {
            let norm = norm.as_f64().unwrap();
            assert!(norm.is_finite() && norm >= 0.0, "{record}");
            if ![1, 5].contains(&at) {
                assert!(norm > 1e-4, "norm {at} of {record}");
            }
        }
    }
    if gpu().is_none() {
        return;
    }
    let gpu = logged_epoch("gpu");
    let first = |log: &serde_json::Value| -> Vec<f64> {
        (log[0]["norms"].as_array().unwrap().iter())
            .map(|n| n.as_f64().unwrap())
            .collect()
    };
    for (at, (c, g)) in first(&cpu).iter().zip(first(&gpu)).enumerate() {
        if ![1, 5].contains(&at) {
            assert!((c - g).abs() <= 1e-4 * c, "norm {at}: cpu {c}, gpu {g}");
        }
    }
}

#[test]
fn logging_every_zero_steps_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = wgnorm(
        &[
            "train",
            "--device",
            "cpu",
            "--log-grad-norms",
            "0",
            "--out",
            "never",
        ],
        dir.path(),
    );
    assert_one_line_error(&output, 2, "--log-grad-norms");
    assert!(!dir.path().join("never").exists());
}
