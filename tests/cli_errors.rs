//! Errors that help: each names the flag, the file or the variable at fault and what to do,
//! in one line, with exit code 2, before anything is written.

mod common;

use common::{assert_one_line_error, gpu, shared_mnist, train_cpu_run, wgnorm, wgnorm_command};

#[test]
fn bad_settings_paths_and_typos_are_named() {
    let Some(data) = shared_mnist() else { return };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| train_cpu_run(data, dir.path(), extra);
    assert_one_line_error(
        &train(&["--lr", "0"]),
        2,
        "--lr must be a positive finite number, got 0",
    );
    assert_one_line_error(
        &train(&["--optimizer", "sgd", "--momentum", "1.5"]),
        2,
        "--momentum must be in [0, 1), got 1.5",
    );
    assert_one_line_error(
        &train(&["--weight-decay", "-1"]),
        2,
        "--weight-decay must be at least 0, and below 1/lr, got -1",
    );
    assert_one_line_error(
        &train(&["--optimizer", "sgd", "--weight-decay", "inf"]),
        2,
        "--weight-decay must be a finite number, at least 0, got inf",
    );
    let output = train(&["--batch-size", "1"]);
    assert_one_line_error(
        &output,
        2,
        "batch size 1 is too small with BatchNorm: its statistics need at least 2 samples",
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("eval mode"));
    assert_one_line_error(
        &train(&["--epoch", "2"]),
        2,
        "unexpected argument '--epoch' found; tip: a similar argument exists: '--epochs'",
    );
    assert_one_line_error(
        &wgnorm(&["trian"], dir.path()),
        2,
        "unrecognized subcommand 'trian'; tip: a similar subcommand exists: 'train'",
    );
    assert!(!dir.path().join("run").exists());

    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let eval = |checkpoint: &str| {
        wgnorm(
            &[
                "eval",
                "--device",
                "cpu",
                "--data-dir",
                data,
                "--checkpoint",
                checkpoint,
            ],
            dir.path(),
        )
    };
    assert_one_line_error(
        &eval("empty"),
        2,
        "--checkpoint empty is a folder, and holds no model.safetensors",
    );
    let trained = wgnorm(
        &[
            "train",
            "--device",
            "cpu",
            "--data-dir",
            data,
            "--out",
            "done",
            "--epochs",
            "1",
            "--train-limit",
            "64",
        ],
        dir.path(),
    );
    assert!(trained.status.success());
    assert_one_line_error(
        &eval("done"),
        2,
        "--checkpoint done is a folder; pass the model in it: done/model.safetensors",
    );
}

#[test]
fn bare_wgnorm_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let output = wgnorm(&[], dir.path());
    assert_eq!(output.status.code(), Some(2));
    let help = String::from_utf8_lossy(&output.stderr);
    for command in [
        "devices", "bn", "train", "eval", "compare", "sweep", "bench",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from: {help}"
        );
    }
    // The summaries say what the commands do: any model and normalization, both datasets, ONNX.
    let line = |command: &str| {
        (help.lines())
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{command} missing from: {help}"))
            .to_string()
    };
    assert!(
        help.contains("LayerNorm") && help.contains("Fashion-MNIST"),
        "{help}"
    );
    assert!(!help.contains("MLP training"), "{help}");
    assert!(line("train").contains("--arch"), "{help}");
    assert!(line("export").contains("ONNX"), "{help}");
    assert!(line("compare").contains("normalizations"), "{help}");
}

#[test]
fn a_wgpu_backend_that_names_no_backend_is_named() {
    let Some(data) = shared_mnist() else { return };
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = data.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["devices"],
        &["train", "--device", "gpu", "--data-dir", data, "--out", "g"],
        &["train", "--data-dir", data, "--out", "a"],
    ];
    for args in runs {
        let output = wgnorm_command(args, dir.path())
            .env("WGPU_BACKEND", "vulcan")
            .output()
            .unwrap();
        assert_one_line_error(
            &output,
            2,
            "WGPU_BACKEND=vulcan names no backend: use vulkan, metal, dx12 or gl",
        );
    }
}
