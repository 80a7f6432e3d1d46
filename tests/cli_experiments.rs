//! `wgnorm compare` and `wgnorm sweep` on a small slice of the real data: their files exist,
//! the JSON has one row per run, the PNGs decode at the stated size, and a diverging
//! configuration is reported as diverged.

mod common;

use std::path::Path;

use common::{assert_one_line_error, shared_mnist, spawn_wgnorm, wgnorm};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `command` on the CPU with the first 300 images.
fn run(dir: &Path, command: &str, extra: &[&str]) -> std::process::Output {
    let data = shared_mnist().unwrap();
    let mut args = vec![
        command,
        "--device",
        "cpu",
        "--train-limit",
        "300",
        "--data-dir",
        data.to_str().unwrap(),
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

#[test]
fn compare_writes_a_table_curves_and_one_row_per_run() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        "compare",
        &["--repeats", "2", "--epochs", "2", "--out", "cmp"],
    );
    let out = dir.path().join("cmp");
    let result = json(&out.join("compare.json"));
    let runs = result["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "2 models x 2 seeds");
    let mut seen: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("mlp".into(), 0),
            ("mlp".into(), 1),
            ("mlp-bn".into(), 0),
            ("mlp-bn".into(), 1)
        ]
    );
    for r in runs {
        assert_eq!(r["epochs"].as_array().unwrap().len(), 2);
        assert!(r["test_acc"].as_f64().unwrap() > 0.3, "{r}");
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| test accuracy (%) |"), "{md}");
    assert!(md.contains(" ± "), "mean ± std over 2 seeds: {md}");
    assert!(md.contains("| first epoch with val accuracy ≥ 97% (per seed) | never, never |"));
    assert!(String::from_utf8_lossy(&output.stdout).contains("## Reading"));
    common::assert_png_shows_curves(&out.join("curves.png"), 2);
    for run in ["mlp-bn-seed0", "mlp-seed1"] {
        assert!(out.join(run).join("model.safetensors").is_file(), "{run}");
    }
    // The results are never overwritten.
    let data = shared_mnist().unwrap();
    let again = wgnorm(
        &[
            "compare",
            "--device",
            "cpu",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "cmp",
        ],
        dir.path(),
    );
    assert_one_line_error(&again, 2, "already holds compare.json");
}

#[test]
fn sweep_writes_one_row_per_run_and_reports_divergence() {
    if shared_mnist().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run(
        dir.path(),
        "sweep",
        &["--epochs", "1", "--batch-sizes", "32,64", "--out", "sweep"],
    );
    let out = dir.path().join("sweep");
    let runs = json(&out.join("sweep.json"))["runs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(runs.len(), 4, "2 models x 2 batch sizes");
    assert!(runs.iter().all(|r| r["diverged"].is_null()));
    assert!(
        runs.iter()
            .all(|r| r["samples_per_second"].as_f64().unwrap() > 0.0)
    );
    common::assert_png_shows_curves(&out.join("sweep.png"), 2);

    // SGD at lr 1000 makes the loss NaN with BatchNorm: a row that says so, not a missing one.
    run(
        dir.path(),
        "sweep",
        &[
            "--epochs",
            "1",
            "--batch-sizes",
            "32",
            "--models",
            "bn",
            "--optimizer",
            "sgd",
            "--lrs",
            "0.01,1000",
            "--out",
            "lrs",
        ],
    );
    let out = dir.path().join("lrs");
    let runs = json(&out.join("sweep.json"))["runs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(runs.len(), 2);
    let diverged: Vec<f64> = runs
        .iter()
        .filter(|r| r["diverged"].is_string())
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(diverged, [1000.0]);
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains("| mlp-bn | 32 | 1000 | 0 | diverged | diverged |"),
        "{md}"
    );
    // A heat map: its cells are colored.
    common::assert_png_shows_curves(&out.join("sweep.png"), 1);
}

#[test]
fn ctrl_c_stops_a_sweep_and_keeps_the_finished_rows() {
    let Some(data) = shared_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_wgnorm(
        &[
            "sweep",
            "--device",
            "cpu",
            "--train-limit",
            "20000",
            "--epochs",
            "2",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            "sweep",
        ],
        dir.path(),
    );
    let results = dir.path().join("sweep/sweep.json");
    let started = std::time::Instant::now();
    while !results.exists() {
        assert!(started.elapsed().as_secs() < 120, "no run finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let runs = json(&results)["runs"].as_array().unwrap().len();
    assert!((1..10).contains(&runs), "{runs} of 10 runs kept");
    let md = std::fs::read_to_string(dir.path().join("sweep/sweep.md")).unwrap();
    // One row per finished run in the table of runs, ahead of the summary over seeds.
    let (per_run, _) = md.split_once("## Over seeds").unwrap();
    assert_eq!(
        per_run
            .lines()
            .filter(|l| l.starts_with("| mlp-bn |") || l.starts_with("| mlp |"))
            .count(),
        runs
    );
}
