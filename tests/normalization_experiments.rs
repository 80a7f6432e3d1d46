//! The small-batch and gradient-flow experiments of docs/normalization.md, run end to end with
//! `--quick` (a few dozen training images), so that their commands cannot rot.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_png_shows_curves, shared_mnist};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `benches/normalization-experiments.sh --quick <experiment> <out>` with this build's binary.
fn run_quick(experiment: &str, out: &Path) {
    let data = shared_mnist().unwrap();
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/normalization-experiments.sh"))
        .args(["--quick", experiment])
        .arg(out)
        .env("WGNORM", env!("CARGO_BIN_EXE_wgnorm"))
        .env("DATA_DIR", data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{experiment}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The model names of a sweep's or comparison's runs, in order.
fn models(results: &Path) -> Vec<String> {
    (json(results)["runs"].as_array().unwrap().iter())
        .map(|run| run["model"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_small_batch_experiment_runs() {
    if shared_mnist().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    run_quick("small-batches", out.path());
    let mlp = models(&out.path().join("small-batches-mlp/sweep.json"));
    let names = ["mlp-bn", "mlp-ln", "mlp-gn8", "mlp"];
    assert_eq!(
        mlp,
        names.map(|n| [n, n]).concat(),
        "batch sizes 2 and 4 of each"
    );
    let cnn = models(&out.path().join("small-batches-cnn/sweep.json"));
    assert_eq!(cnn.len(), 10, "{cnn:?}");
    assert!(cnn.contains(&"cnn-in".to_string()), "{cnn:?}");
    for sweep in ["small-batches-mlp", "small-batches-cnn"] {
        assert_png_shows_curves(&out.path().join(sweep).join("sweep.png"), 2);
    }
}

#[test]
fn the_gradient_flow_experiment_runs() {
    if shared_mnist().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    run_quick("gradient-flow", out.path());
    let dir = out.path().join("gradient-flow");
    let compared = ["mlp-bn", "mlp-ln", "mlp-gn8", "mlp"];
    assert_eq!(models(&dir.join("compare.json")), compared);
    for run in compared.map(|model| format!("{model}-seed0")) {
        let metrics = json(&dir.join(&run).join("metrics.json"));
        let names = metrics["grad_norm_names"].as_array().unwrap();
        // 9 Linear layers' weights and biases (and γ, β per normalization), 8 inputs after
        // the first.
        let inputs = names
            .iter()
            .filter(|n| n.as_str().unwrap().ends_with(".input"));
        assert_eq!(inputs.count(), 8, "{run}");
        assert!(
            !metrics["epochs"][0]["grad_norms"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        assert_png_shows_curves(&dir.join(&run).join("grad_norms.png"), 2);
    }
}
