//! `wgnorm train --devices`: ranks on threads of one process, each on its own device, train
//! what one device trains at the global batch; without synchronization they do not; a run
//! resumes exactly with its world size and refuses another; every flag that cannot run is
//! refused in one line; and under mpirun a binary without MPI says how to build one.

mod common;

use std::path::Path;

use common::replicas::{largest_difference, saved_models_differ};
use common::{assert_one_line_error, shared_mnist, wgnorm, wgnorm_command, wgnorm_ok};
use wgnorm::checkpoint::load_model;

/// 3,200 images, 1% held out for validation: 50 steps of 64 images (32 on each of 2 ranks).
const QUICK: [&str; 6] = [
    "--train-limit",
    "3200",
    "--val-split",
    "0.01",
    "--seed",
    "3",
];

/// `wgnorm train` of the `QUICK` run into `out`, with `extra`; returns its log.
fn train(dir: &Path, data: &str, out: &str, extra: &[&str]) -> String {
    let mut args = vec!["train", "--data-dir", data, "--out", out];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(extra);
    if !extra.contains(&"--epochs") {
        args.extend_from_slice(&["--epochs", "1"]);
    }
    String::from_utf8_lossy(&wgnorm_ok(&args, dir).stderr).into_owned()
}

/// `ranks` (2 ranks of 32 images) and `alone` (one device, 64 images) train one model; returns
/// the log of the ranks' run.
fn assert_ranks_train_as_alone(dir: &Path, data: &str, alone: &[&str], ranks: &[&str]) -> String {
    train(
        dir,
        data,
        "alone",
        &[alone, &["--batch-size", "64"]].concat(),
    );
    let log = train(dir, data, "ranks", ranks);
    let (error, name) = saved_models_differ(&dir.join("ranks"), &dir.join("alone"));
    assert!(
        error <= 1e-5,
        "{ranks:?} differ from one device by {error:.2e} in {name}"
    );
    log
}

#[test]
fn two_cpu_ranks_train_what_one_cpu_trains_at_the_global_batch() {
    let Some(data) = shared_mnist() else { return };
    let (data, dir) = (data.to_str().unwrap(), tempfile::tempdir().unwrap());
    let dir = dir.path();
    assert_ranks_train_as_alone(dir, data, &["--device", "cpu"], &["--devices", "cpu,cpu"]);
    train(dir, data, "own", &["--devices", "cpu,cpu", "--no-sync-bn"]);
    let (error, name) = saved_models_differ(&dir.join("own"), &dir.join("alone"));
    assert!(
        error > 1e-3,
        "without synchronization 2 ranks trained as one device ({error:.2e} in {name})"
    );
}

#[test]
fn two_gpu_ranks_train_what_one_gpu_trains_at_the_global_batch() {
    let Some(data) = shared_mnist() else { return };
    if common::gpu().is_none() {
        return;
    }
    let (data, dir) = (data.to_str().unwrap(), tempfile::tempdir().unwrap());
    let log = assert_ranks_train_as_alone(
        dir.path(),
        data,
        &["--device", "gpu"],
        &["--devices", "0,0"],
    );
    assert!(
        log.contains(
            "data-parallel: 2 ranks (0,0), global batch 64 (32 per rank), BatchNorm statistics \
             over the global batch (synchronized)"
        ),
        "{log}"
    );
}

#[test]
fn a_data_parallel_run_resumes_exactly_with_its_world_size_and_refuses_another() {
    let Some(data) = shared_mnist() else { return };
    let (data, dir) = (data.to_str().unwrap(), tempfile::tempdir().unwrap());
    let dir = dir.path();
    let two = ["--devices", "cpu,cpu", "--epochs", "2"];
    train(dir, data, "straight", &two);
    train(dir, data, "resumed", &["--devices", "cpu,cpu"]);
    train(dir, data, "resumed", &[&two[..], &["--resume"]].concat());
    let model = |run: &str| load_model(&dir.join(run).join("model.safetensors")).unwrap();
    let (error, name) = largest_difference(&model("resumed").model, &model("straight").model, &[]);
    assert_eq!(error, 0.0, "{name} differs after --resume");
    let val_losses = |run: &str| {
        let text = std::fs::read_to_string(dir.join(run).join("metrics.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        (json["epochs"].as_array().unwrap().iter())
            .map(|epoch| epoch["val_loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(val_losses("resumed"), val_losses("straight"));
    let kept = std::fs::read(dir.join("resumed/model.safetensors")).unwrap();
    for (other, setting) in [
        (&["--device", "cpu"][..], "world"),
        (&["--devices", "cpu,cpu,cpu"][..], "world"),
        (
            &["--devices", "cpu,cpu", "--no-sync-bn"][..],
            "sync_batchnorm",
        ),
    ] {
        let mut args = vec!["train", "--data-dir", data, "--out", "resumed", "--resume"];
        args.extend_from_slice(&QUICK);
        args.extend_from_slice(&["--epochs", "3"]);
        args.extend_from_slice(other);
        let output = wgnorm(&args, dir);
        assert_one_line_error(&output, 2, setting);
    }
    let after = std::fs::read(dir.join("resumed/model.safetensors")).unwrap();
    assert!(kept == after, "a refused --resume changed the saved model");
}

#[test]
fn flags_that_cannot_run_data_parallel_are_refused_in_one_line() {
    let Some(data) = shared_mnist() else { return };
    let (data, dir) = (data.to_str().unwrap(), tempfile::tempdir().unwrap());
    let dir = dir.path();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--device", "cpu", "--no-sync-bn"],
            "--no-sync-bn has no effect on one device",
        ),
        (&["--devices", "cpu"], "--devices needs two devices or more"),
        (
            &["--devices", "cpu,fast"],
            "'fast' is neither cpu nor an adapter's number",
        ),
        (&["--devices", "cpu,cpu", "--device", "cpu"], "--device"),
        (
            &["--devices", "cpu,cpu", "--no-sync-bn", "--model", "mlp"],
            "the model has no BatchNorm",
        ),
        (
            &[
                "--devices",
                "cpu,cpu,cpu",
                "--train-limit",
                "2",
                "--batch-size",
                "2",
            ],
            "2 training images cannot give each of 3 ranks one",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["train", "--data-dir", data, "--out", "run", "--epochs", "1"];
        args.extend_from_slice(flags);
        assert_one_line_error(&wgnorm(&args, dir), 2, needle);
        assert!(!dir.join("run").exists(), "{flags:?} left a folder behind");
    }
}

/// What mpirun tells each process, as OpenMPI does.
fn under_mpirun(args: &[&str], dir: &Path, rank: &str) -> std::process::Output {
    wgnorm_command(args, dir)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", rank)
        .output()
        .unwrap()
}

#[test]
#[cfg(not(feature = "mpi"))]
fn under_mpirun_a_binary_without_mpi_says_how_to_build_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = under_mpirun(&["train", "--device", "cpu"], dir.path(), "0");
    assert_one_line_error(&output, 2, "cargo build --release --features mpi");
}

#[test]
fn under_mpirun_other_commands_run_on_rank_0_alone() {
    let Some(data) = shared_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = data.to_str().unwrap();
    let args = [
        "eval",
        "--device",
        "cpu",
        "--data-dir",
        data,
        "--checkpoint",
        "none",
    ];
    let output = under_mpirun(&args, dir.path(), "1");
    assert!(output.status.success());
    assert!(output.stdout.is_empty() && output.stderr.is_empty());
    // Rank 0 runs it, and finds no checkpoint.
    assert_one_line_error(&under_mpirun(&args, dir.path(), "0"), 2, "none");
}

#[test]
fn the_distributed_bench_times_every_exchange_and_refuses_flags_it_ignores() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--suite",
        "distributed",
        "--ranks",
        "3",
        "--reps",
        "2",
        "--warmup",
        "0",
    ];
    let output = wgnorm_ok(&args, dir.path());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("exchanges between 3 ranks (threads of one process)"),
        "{text}"
    );
    for exchange in ["statistics", "mlp-bn's", "cnn-bn's", "resnet20's"] {
        assert!(
            text.lines()
                .any(|line| line.contains(exchange) && line.contains(" µs")),
            "{exchange} missing: {text}"
        );
    }
    let refused: [(&[&str], &str); 4] = [
        (
            &["--suite", "distributed", "--device", "cpu"],
            "--device has no effect",
        ),
        (
            &["--suite", "kernels", "--ranks", "2"],
            "--ranks has no effect",
        ),
        (
            &["--suite", "distributed", "--ranks", "17"],
            "runs 2 to 16 ranks",
        ),
        (
            &["--suite", "distributed", "--reps", "0"],
            "--reps must be at least 1",
        ),
    ];
    for (flags, needle) in refused {
        let output = wgnorm(&[&["bench"][..], flags].concat(), dir.path());
        assert_one_line_error(&output, 2, needle);
    }
}
