//! `wgnorm bench` with few repetitions: the JSON holds one row per measurement with the byte
//! model applied, GPU rows carry device time and the GPU/CPU ratio, the plot decodes, and bad
//! flags are one-line errors that leave existing files alone. (Speed itself is a benchmark's
//! business, not a test's.)

mod common;

use std::path::Path;

use common::{assert_one_line_error, gpu, wgnorm};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn positive(value: &serde_json::Value, what: &str) -> f64 {
    let v = value.as_f64().unwrap_or_else(|| panic!("{what}: {value}"));
    assert!(v.is_finite() && v > 0.0, "{what}: {v}");
    v
}

#[test]
fn kernel_suite_on_the_cpu_applies_the_byte_model_to_every_shape_and_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = wgnorm(
        &[
            "bench",
            "--suite",
            "kernels",
            "--device",
            "cpu",
            "--reps",
            "3",
            "--warmup",
            "1",
            "--shapes",
            "32x128,4x8x3x3",
            "--json",
            "k.json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("wgnorm's CPU backend runs on 1 thread"),
        "{stdout}"
    );
    let report = json(&dir.path().join("k.json"));
    let rows = report["kernels"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 3, "two shapes × three passes");
    for row in rows {
        let numel = match row["shape"].as_str().unwrap() {
            "32x128" => 32 * 128,
            "4x8x3x3" => 4 * 8 * 9,
            other => panic!("unexpected shape {other}"),
        };
        let passes = match row["pass"].as_str().unwrap() {
            "forward" => 3,
            "backward" => 5,
            "forward_backward" => 8,
            other => panic!("unexpected pass {other}"),
        };
        assert_eq!(row["bytes"].as_u64().unwrap(), (passes * numel * 4) as u64);
        assert_eq!(row["device"], "cpu");
        assert_eq!(row["timing"]["wall"]["reps"], 3);
        let median = positive(&row["timing"]["wall"]["median"], "median");
        let rate = positive(&row["bytes_per_second"], "rate");
        assert!((rate * median / (passes * numel * 4) as f64 - 1.0).abs() < 1e-9);
        assert!(
            row["timing"]["device"].is_null(),
            "the CPU has no device clock"
        );
    }
    let ceiling = &report["ceilings"][0];
    assert_eq!(ceiling["device"], "cpu");
    let copy = positive(&ceiling["copy_bytes_per_second"], "copy bandwidth");
    let stream = positive(&ceiling["stream_bytes_per_second"], "stream bandwidth");
    for row in rows {
        let rate = row["bytes_per_second"].as_f64().unwrap();
        assert!((row["of_copy"].as_f64().unwrap() * copy / rate - 1.0).abs() < 1e-9);
        assert!((row["of_stream"].as_f64().unwrap() * stream / rate - 1.0).abs() < 1e-9);
    }
}

#[test]
fn kernel_suite_on_both_devices_gives_gpu_rows_device_time_and_the_ratio() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = wgnorm(
        &[
            "bench", "--suite", "kernels", "--reps", "2", "--warmup", "1", "--shapes", "64x32",
            "--json", "k.json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&dir.path().join("k.json"));
    assert_eq!(report["machine"]["gpu"], gpu.adapter().to_string());
    let rows = report["kernels"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 2, "three passes × two devices");
    for row in rows.iter().filter(|r| r["device"] == "gpu") {
        let ratio = positive(&row["gpu_over_cpu"], "gpu/cpu");
        let cpu = rows
            .iter()
            .find(|r| r["device"] == "cpu" && r["pass"] == row["pass"])
            .unwrap();
        let expected = row["timing"]["wall"]["median"].as_f64().unwrap()
            / cpu["timing"]["wall"]["median"].as_f64().unwrap();
        assert!((ratio / expected - 1.0).abs() < 1e-9);
        if gpu.has_timestamps() {
            positive(&row["timing"]["device"]["median"], "device time");
        }
    }
    let ceilings = report["ceilings"].as_array().unwrap();
    assert_eq!(ceilings.len(), 2);
    for ceiling in ceilings {
        positive(&ceiling["stream_bytes_per_second"], "stream bandwidth");
    }
}

#[test]
fn train_suite_times_every_model_batch_and_device_and_plots_them() {
    let dir = tempfile::tempdir().unwrap();
    let device = if gpu().is_some() { "both" } else { "cpu" };
    let out = wgnorm(
        &[
            "bench",
            "--suite",
            "train",
            "--device",
            device,
            "--reps",
            "2",
            "--warmup",
            "1",
            "--batch-sizes",
            "16,48",
            "--no-epoch",
            "--json",
            "t.json",
            "--plot",
            "t.png",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&dir.path().join("t.json"));
    let devices = if device == "both" { 2 } else { 1 };
    let rows = report["train_steps"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 * 2 * devices,
        "models × batch sizes × devices"
    );
    for row in rows {
        let batch = row["batch"].as_f64().unwrap();
        let step = positive(&row["seconds_per_step"]["median"], "step");
        let samples = positive(&row["samples_per_second"], "samples/s");
        assert!((samples * step / batch - 1.0).abs() < 1e-9);
    }
    assert_eq!(
        report["first_step_seconds"].as_array().unwrap().len(),
        devices
    );
    assert!(report["reference_epoch"].as_array().unwrap().is_empty());
    // Where the GPU can time kernels, each model's batch-32 step is broken down by kernel, and
    // the shares cover the whole step.
    let profiles = report["step_kernels"].as_array().unwrap();
    match gpu() {
        Some(gpu) if gpu.has_timestamps() => {
            assert_eq!(profiles.len(), 2, "one per model");
            for profile in profiles {
                let kernels = profile["kernels"].as_array().unwrap();
                let shares: f64 = kernels.iter().map(|k| k["share"].as_f64().unwrap()).sum();
                assert!((shares - 1.0).abs() < 1e-9, "{shares}");
                assert!(
                    kernels
                        .iter()
                        .any(|k| k["kernel"].as_str().unwrap().starts_with("matmul."))
                );
            }
        }
        _ => assert!(profiles.is_empty()),
    }
    // The bn step's five products (two per layer, and the second layer's input gradient), each
    // on every device, checked against the CPU and rated by 2·m·k·n FLOPs.
    let products = report["matmul_products"].as_array().unwrap();
    assert_eq!(products.len(), 5 * devices);
    for row in products {
        let shape: Vec<f64> = (row["shape"].as_str().unwrap().split('x'))
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            row["flops"].as_f64().unwrap(),
            2.0 * shape.iter().product::<f64>()
        );
        positive(&row["flops_per_second"], "FLOP/s");
        let difference = row["timing"]["difference_from_cpu"].as_f64().unwrap();
        assert!(difference <= 1e-4, "{row}");
        assert_eq!(row["kernel"].is_string(), row["device"] == "gpu", "{row}");
    }
    let first_layer: Vec<&str> = (products.iter())
        .filter(|row| row["layer"] == 0 && row["device"] == products[0]["device"])
        .map(|row| row["product"].as_str().unwrap())
        .collect();
    assert_eq!(
        first_layer,
        ["forward", "weight_grad"],
        "no input gradient for the data"
    );
    common::assert_png_shows_curves(&dir.path().join("t.png"), 1);
}

#[test]
fn bad_bench_flags_are_one_line_errors_and_existing_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--reps", "0"], "--reps"),
        (vec!["--shapes", "32xabc"], "32xabc"),
        (vec!["--shapes", "1x128"], "1x128"),
        (vec!["--batch-sizes", "1"], "--batch-sizes"),
        (vec!["--batch-sizes", "16,5000"], "5000 is outside"),
    ] {
        let mut all = vec!["bench", "--device", "cpu"];
        all.extend(args);
        assert_one_line_error(&wgnorm(&all, dir.path()), 2, needle);
    }
    std::fs::write(dir.path().join("mine.json"), "keep me").unwrap();
    let out = wgnorm(
        &["bench", "--device", "cpu", "--json", "mine.json"],
        dir.path(),
    );
    assert_one_line_error(&out, 2, "mine.json already exists");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mine.json")).unwrap(),
        "keep me"
    );
}
