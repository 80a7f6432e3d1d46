//! `wgnorm export` from the command line: a model with BatchNorm folded scores as the original
//! does, in f32 and f16 files, and bad requests are one line and exit code 2.

mod common;

use common::{assert_one_line_error, eval_on_cpu, shared_mnist, train_on_cpu, wgnorm};
use wgnorm::checkpoint;

#[test]
fn a_folded_model_scores_as_the_original() {
    let Some(data) = shared_mnist() else {
        return;
    };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    train_on_cpu(dir.path(), data, "mlp-bn", "3200", "bn", &[]);
    train_on_cpu(dir.path(), data, "mlp", "3200", "plain", &[]);
    let (acc, loss) = eval_on_cpu("bn/model.safetensors", data, dir.path());
    let export = |extra: &[&str]| {
        let mut args = vec!["export", "--checkpoint", "bn/model.safetensors"];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    let wrote = export(&["--fold-bn", "--safetensors", "folded.safetensors"]);
    assert!(wrote.status.success());
    assert!(!String::from_utf8_lossy(&wrote.stdout).contains("BatchNorm"));
    let folded = checkpoint::load_model(&dir.path().join("folded.safetensors")).unwrap();
    assert!(!folded.spec.has_batchnorm());
    let (folded_acc, folded_loss) = eval_on_cpu("folded.safetensors", data, dir.path());
    assert_eq!(folded_acc, acc);
    assert!(
        (folded_loss - loss).abs() < 1e-5 * loss,
        "{folded_loss} {loss}"
    );

    let half = export(&[
        "--fold-bn",
        "--export-dtype",
        "f16",
        "--safetensors",
        "folded.f16.safetensors",
    ]);
    assert!(half.status.success());
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
    assert!(size("folded.f16.safetensors") < size("folded.safetensors") * 6 / 10);
    let (half_acc, _) = eval_on_cpu("folded.f16.safetensors", data, dir.path());
    assert!((half_acc - acc).abs() < 0.003, "{half_acc} {acc}");

    let again = export(&["--fold-bn", "--safetensors", "folded.safetensors"]);
    assert_one_line_error(&again, 2, "already exists");
    let nowhere = export(&["--fold-bn"]);
    assert_one_line_error(&nowhere, 2, "--safetensors FILE or --onnx FILE");
    let plain = wgnorm(
        &[
            "export",
            "--checkpoint",
            "plain/model.safetensors",
            "--fold-bn",
            "--safetensors",
            "x.safetensors",
        ],
        dir.path(),
    );
    assert_one_line_error(&plain, 2, "--fold-bn has no effect");
    assert!(!dir.path().join("x.safetensors").exists());
}

#[test]
fn one_file_for_both_formats_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let output = wgnorm(
        &[
            "export",
            "--checkpoint",
            "model.safetensors",
            "--safetensors",
            "model.out",
            "--onnx",
            "./model.out",
        ],
        dir.path(),
    );
    assert_one_line_error(&output, 2, "--safetensors and --onnx both name ./model.out");
    assert!(!dir.path().join("model.out").exists());
}
