//! A flag that would change nothing is refused, naming it and what to use instead: every
//! command's flags that depend on another flag's value.

mod common;

use common::{assert_one_line_error, shared_mnist, wgnorm};

#[test]
fn flags_that_would_have_no_effect_are_one_line_errors() {
    let Some(data) = shared_mnist() else { return };
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--momentum", "0.9"],
            "--momentum is SGD's: Adam would ignore it (use --optimizer sgd",
        ),
        (
            &["train", "--model", "nobn", "--bn-eps", "1e-3"],
            "--bn-eps has no effect: no model of this run has a BatchNorm layer (put bn in --model",
        ),
        (
            &["train", "--model", "nobn", "--bn-momentum", "0.01"],
            "--bn-momentum has no effect",
        ),
        (
            &["train", "--model", "nobn", "--bn-running-var", "biased"],
            "--bn-running-var has no effect",
        ),
        (
            &["train", "--train-limit", "54001", "--out", "limit"],
            "--train-limit: a limit of 54001 images is more than the 54000 training images",
        ),
        (
            &["sweep", "--batch-size", "64"],
            "sweep takes --batch-sizes (a comma-separated list), not --batch-size",
        ),
        (
            &["sweep", "--lr", "0.01", "--lrs", "0.1,0.01"],
            "--lr has no effect beside --lrs",
        ),
        (
            &["sweep", "--models", "nobn", "--bn-eps", "1e-3"],
            "put bn in --models, or drop --bn-eps",
        ),
        (&["sweep", "--momentum", "0.9"], "--momentum is SGD's"),
        (
            &["compare", "--train-limit", "60000"],
            "--train-limit: a limit of 60000 images is more than the 54000",
        ),
        (
            &["bench", "--suite", "train", "--shapes", "32x128"],
            "--shapes has no effect here: only the kernels suite reads it, and --suite train",
        ),
        (
            &["bench", "--suite", "kernels", "--batch-sizes", "32"],
            "--batch-sizes has no effect here: only the train suite reads it",
        ),
        (
            &["bench", "--suite", "kernels", "--no-epoch"],
            "--no-epoch has no effect here",
        ),
        (
            &["bench", "--suite", "kernels", "--plot", "steps.png"],
            "--plot has no effect here",
        ),
        (
            &["bench", "--no-epoch", "--data-dir", "mnist"],
            "--data-dir has no effect here: only the train suite's reference epoch reads it, \
             and --suite all with --no-epoch runs none",
        ),
        (
            &[
                "bench",
                "--suite",
                "train",
                "--no-epoch",
                "--data-dir",
                "mnist",
            ],
            "and --suite train with --no-epoch runs none",
        ),
        (
            &[
                "bench",
                "--suite",
                "kernels",
                "--mirror",
                "http://127.0.0.1:9",
            ],
            "--mirror has no effect here",
        ),
        (
            &["train", "--lr-gamma", "0.5"],
            "--lr-gamma has no effect without --lr-schedule step",
        ),
        (
            &["train", "--lr-schedule", "cosine", "--lr-step-every", "2"],
            "--lr-step-every has no effect without --lr-schedule step",
        ),
        (
            &["train", "--lr-schedule", "onecycle", "--warmup-epochs", "1"],
            "--warmup-epochs has no effect with --lr-schedule onecycle",
        ),
        (
            &["train", "--lr-schedule", "step"],
            "--lr-schedule step needs --lr-step-every N",
        ),
        (
            &["train", "--lr-schedule", "cosine", "--warmup-epochs", "5"],
            "a warm-up of 5 epochs leaves none of the 5 epochs to the schedule",
        ),
        (
            &["bench", "--device", "cpu", "--adapter", "llvmpipe"],
            "--adapter picks a GPU adapter; with --device cpu it has no effect",
        ),
        (
            &[
                "eval",
                "--checkpoint",
                "model.safetensors",
                "--adapter",
                "llvmpipe",
            ],
            "--adapter picks a GPU adapter; with --device cpu it has no effect",
        ),
    ];
    for (args, needle) in cases {
        let mut args = args.to_vec();
        if args[0] != "bench" {
            args.extend_from_slice(&["--device", "cpu", "--data-dir", data]);
        }
        let output = wgnorm(&args, dir.path());
        assert_one_line_error(&output, 2, needle);
    }
    // Nothing was started or written.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
