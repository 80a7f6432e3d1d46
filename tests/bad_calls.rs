//! Every op checks its arguments once, in its trait, so both backends refuse the same bad
//! calls with the same errors: a table of bad calls runs on each and the errors are compared.

mod common;

use wgnorm::Backend;
use wgnorm::cpu::CpuBackend;
use wgnorm::ops::Compute;
use wgnorm::ops::activation::{Activation, DropoutMask};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormShape, Mode, RunningStats,
};
use wgnorm::ops::groupnorm::{GROUPNORM_EPS, GroupNormShape};
use wgnorm::ops::loss::metric;
use wgnorm::ops::matmul::MatrixLayout;
use wgnorm::ops::optimizer::OptimizerParams;

type Call<'a, B> = (
    &'static str,
    &'static str,
    Box<dyn Fn(&B) -> wgnorm::Result<()> + 'a>,
);

/// (what, a word the message must hold, the call) for every bad call.
fn table<'a, B: Compute + 'a>() -> Vec<Call<'a, B>> {
    let v = |b: &B, len: usize| b.filled(len, 1.0).unwrap();
    let rm = MatrixLayout::row_major;
    let mut calls: Vec<Call<'a, B>> = vec![
        (
            "matmul inner dimensions",
            "inner dimensions differ",
            Box::new(move |b: &B| {
                b.matmul(&v(b, 6), rm(2, 3), &v(b, 8), rm(4, 2), None, &mut v(b, 4))
            }),
        ),
        (
            "matmul operand too short",
            "does not fit",
            Box::new(move |b: &B| {
                b.matmul(&v(b, 5), rm(2, 3), &v(b, 6), rm(3, 2), None, &mut v(b, 4))
            }),
        ),
        (
            "matmul bias length",
            "bias has 3 values",
            Box::new(move |b: &B| {
                b.matmul(
                    &v(b, 6),
                    rm(2, 3),
                    &v(b, 6),
                    rm(3, 2),
                    Some(&v(b, 3)),
                    &mut v(b, 4),
                )
            }),
        ),
        (
            "matmul output length",
            "output has 5 values",
            Box::new(move |b: &B| {
                b.matmul(&v(b, 6), rm(2, 3), &v(b, 6), rm(3, 2), None, &mut v(b, 5))
            }),
        ),
        (
            "relu output length",
            "relu x has 4 values, expected 3",
            Box::new(move |b: &B| b.relu_forward(&v(b, 4), &mut v(b, 3))),
        ),
        (
            "relu backward dy length",
            "dy has 2 values",
            Box::new(move |b: &B| b.relu_backward(&v(b, 3), &v(b, 2), &mut v(b, 3))),
        ),
        (
            "dropout output length",
            "dropout x has 4 values",
            Box::new(move |b: &B| {
                b.dropout_forward(&DropoutMask::new(0.5, 1, 0, 1), &v(b, 4), &mut v(b, 5))
            }),
        ),
        (
            "relu backward without x",
            "relu backward needs the forward's x",
            Box::new(move |b: &B| {
                b.activation_backward(Activation::RELU, None, &v(b, 3), &mut v(b, 3))
            }),
        ),
        (
            "relu+add addend length",
            "relu+add addend has 5 values, expected 6",
            Box::new(move |b: &B| {
                b.activation_forward_sum(Activation::RELU, &v(b, 6), &v(b, 5), &mut v(b, 6))
            }),
        ),
        (
            "dropout+add output length",
            "dropout+add x has 6 values, expected 7",
            Box::new(move |b: &B| {
                let dropout = Activation::dropout(DropoutMask::new(0.5, 1, 0, 1));
                b.activation_forward_sum(dropout, &v(b, 6), &v(b, 6), &mut v(b, 7))
            }),
        ),
        (
            "relu+add backward dy length",
            "relu+add backward dy has 5 values, expected 6",
            Box::new(move |b: &B| {
                let (x, s) = (v(b, 6), v(b, 6));
                b.activation_backward_sum(
                    Activation::RELU,
                    Some(&x),
                    Some(&s),
                    &v(b, 5),
                    &mut v(b, 6),
                )
            }),
        ),
        (
            "relu+add backward without the addend",
            "relu+add backward needs the forward's addend",
            Box::new(move |b: &B| {
                let x = v(b, 6);
                b.activation_backward_sum(Activation::RELU, Some(&x), None, &v(b, 6), &mut v(b, 6))
            }),
        ),
        (
            "relu+add backward addend length",
            "relu+add backward addend has 4 values, expected 6",
            Box::new(move |b: &B| {
                let (x, s) = (v(b, 6), v(b, 4));
                b.activation_backward_sum(
                    Activation::RELU,
                    Some(&x),
                    Some(&s),
                    &v(b, 6),
                    &mut v(b, 6),
                )
            }),
        ),
        (
            "add b length",
            "add b has 3 values, expected 4",
            Box::new(move |b: &B| b.add(&v(b, 4), &v(b, 3), &mut v(b, 4))),
        ),
        (
            "loss without classes",
            "at least one row and one class",
            Box::new(move |b: &B| {
                b.softmax_cross_entropy(&v(b, 2), &v(b, 2), 0, None, &mut v(b, metric::LEN))
            }),
        ),
        (
            "loss logits length",
            "logits has 5 values, expected 6",
            Box::new(move |b: &B| {
                b.softmax_cross_entropy(&v(b, 5), &v(b, 2), 3, None, &mut v(b, metric::LEN))
            }),
        ),
        (
            "loss gradient length",
            "gradient has 4 values",
            Box::new(move |b: &B| {
                let mut d = v(b, 4);
                b.softmax_cross_entropy(&v(b, 6), &v(b, 2), 3, Some(&mut d), &mut v(b, metric::LEN))
            }),
        ),
        (
            "loss metrics length",
            "metrics buffer has 3 values",
            Box::new(move |b: &B| {
                b.softmax_cross_entropy(&v(b, 6), &v(b, 2), 3, None, &mut v(b, 3))
            }),
        ),
        (
            "argmax without classes",
            "argmax needs at least one row and one class",
            Box::new(move |b: &B| b.argmax(&v(b, 2), 0, &mut v(b, 2))),
        ),
        (
            "argmax logits length",
            "argmax logits has 5 values, expected 6",
            Box::new(move |b: &B| b.argmax(&v(b, 5), 3, &mut v(b, 2))),
        ),
        (
            "argmax beyond exact f32 classes",
            "exact up to 16777216",
            Box::new(move |b: &B| b.argmax(&v(b, 2), (1 << 24) + 1, &mut v(b, 1))),
        ),
        (
            "adam gradient length",
            "gradient has 3 values, expected 4",
            Box::new(move |b: &B| {
                let p = OptimizerParams::adam(4, 1e-3, 0.9, 0.999, 1e-8, 1);
                b.adam_update(&p, &mut v(b, 4), &v(b, 3), &mut v(b, 4), &mut v(b, 4))
            }),
        ),
        (
            "sgd momentum length",
            "momentum buffer has 2 values",
            Box::new(move |b: &B| {
                let p = OptimizerParams::sgd(4, 1e-2, 0.9);
                b.sgd_update(&p, &mut v(b, 4), &v(b, 4), &mut v(b, 2))
            }),
        ),
        (
            "gather past the index list",
            "reaches past the 2 indices",
            Box::new(move |b: &B| {
                let images = b.upload_images(&[0; 12], 4, &[0, 1, 2]).unwrap();
                let index = b.upload_indices(&[0, 1]).unwrap();
                b.gather(&images, &index, 1, &mut v(b, 8), &mut v(b, 2))
            }),
        ),
        (
            "gather of an index past the images",
            "index 3 is past the 3 images",
            Box::new(move |b: &B| {
                let images = b.upload_images(&[0; 12], 4, &[0, 1, 2]).unwrap();
                let index = b.upload_indices(&[0, 3]).unwrap();
                b.gather(&images, &index, 0, &mut v(b, 8), &mut v(b, 2))
            }),
        ),
        (
            "gather batch length",
            "gathered batch has 7 values",
            Box::new(move |b: &B| {
                let images = b.upload_images(&[0; 12], 4, &[0, 1, 2]).unwrap();
                let index = b.upload_indices(&[0, 1]).unwrap();
                b.gather(&images, &index, 0, &mut v(b, 7), &mut v(b, 2))
            }),
        ),
    ];
    let shape = BatchNormShape::new(2, 3, 1);
    let forward = move |b: &B, mode: Mode, shape: BatchNormShape, x: usize, gamma: usize| {
        let affine = Affine {
            gamma: v(b, gamma),
            beta: v(b, 3),
        };
        let mut running = RunningStats {
            mean: v(b, 3),
            var: v(b, 3),
        };
        let mut out = BatchNormForward {
            y: v(b, x),
            stats: v(b, shape.stats_len()),
        };
        let config = BatchNormConfig::default();
        b.batchnorm_forward(
            mode,
            &v(b, x),
            shape,
            &affine,
            &mut running,
            config,
            &mut out,
        )
    };
    calls.extend::<Vec<Call<'a, B>>>(vec![
        (
            "batchnorm x length",
            "x has 5 values, expected 6",
            Box::new(move |b: &B| forward(b, Mode::Train, shape, 5, 3)),
        ),
        (
            "batchnorm gamma length",
            "gamma has 2 values",
            Box::new(move |b: &B| forward(b, Mode::Eval, shape, 6, 2)),
        ),
        (
            "batchnorm training on one value",
            "more than 1 value per channel",
            Box::new(move |b: &B| forward(b, Mode::Train, BatchNormShape::new(1, 3, 1), 3, 3)),
        ),
        (
            "batchnorm empty input",
            "non-empty x",
            Box::new(move |b: &B| forward(b, Mode::Eval, BatchNormShape::new(0, 3, 1), 0, 3)),
        ),
        (
            "batchnorm backward dy length",
            "dy has 4 values",
            Box::new(move |b: &B| {
                let mut grads = BatchNormGrads {
                    dx: v(b, 6),
                    dgamma: v(b, 3),
                    dbeta: v(b, 3),
                };
                b.batchnorm_backward(&v(b, 6), &v(b, 4), shape, &v(b, 3), &v(b, 15), &mut grads)
            }),
        ),
    ]);
    calls.extend(groupnorm_calls());
    calls
}

/// GroupNorm's bad calls: each refused by GroupNorm's own checks, in its own words.
fn groupnorm_calls<'a, B: Compute + 'a>() -> Vec<Call<'a, B>> {
    let v = |b: &B, len: usize| b.filled(len, 1.0).unwrap();
    // x of 2 samples of 6 channels; `x` values given, `stats` for `shape`.
    let forward = move |b: &B, shape: GroupNormShape, x: usize, gamma: usize, eps: f32| {
        let affine = Affine {
            gamma: v(b, gamma),
            beta: v(b, 6),
        };
        let mut out = BatchNormForward {
            y: v(b, x),
            stats: v(b, shape.stats_len()),
        };
        b.groupnorm_forward(&v(b, x), shape, &affine, eps, &mut out)
    };
    let shape = GroupNormShape::new(2, 1, 6, 2);
    vec![
        (
            "groupnorm x length",
            "GroupNorm x has 10 values, expected 12",
            Box::new(move |b: &B| forward(b, shape, 10, 6, GROUPNORM_EPS)),
        ),
        (
            "groupnorm gamma length",
            "GroupNorm gamma has 3 values, expected 6",
            Box::new(move |b: &B| forward(b, shape, 12, 3, GROUPNORM_EPS)),
        ),
        (
            "groupnorm groups that do not divide the channels",
            "GroupNorm cannot split 6 channels into 4 groups",
            Box::new(move |b: &B| {
                forward(b, GroupNormShape::new(2, 1, 6, 4), 12, 6, GROUPNORM_EPS)
            }),
        ),
        (
            "groupnorm a group of one value",
            "GroupNorm needs more than 1 value per group",
            Box::new(move |b: &B| {
                forward(
                    b,
                    GroupNormShape::instance_norm(2, 1, 6),
                    12,
                    6,
                    GROUPNORM_EPS,
                )
            }),
        ),
        (
            "groupnorm empty input",
            "GroupNorm needs a non-empty x",
            Box::new(move |b: &B| forward(b, GroupNormShape::new(0, 1, 6, 2), 0, 6, GROUPNORM_EPS)),
        ),
        (
            "groupnorm eps",
            "GroupNorm eps must be a positive finite number",
            Box::new(move |b: &B| forward(b, shape, 12, 6, f32::NAN)),
        ),
        (
            "groupnorm backward stats length",
            "GroupNorm stats has 10 values, expected 20",
            Box::new(move |b: &B| {
                let mut grads = BatchNormGrads {
                    dx: v(b, 12),
                    dgamma: v(b, 6),
                    dbeta: v(b, 6),
                };
                b.groupnorm_backward(&v(b, 12), &v(b, 12), shape, &v(b, 6), &v(b, 10), &mut grads)
            }),
        ),
    ]
}

/// Each bad call's error on `backend`, checked to hold its word.
fn errors<B: Compute>(backend: &B) -> Vec<(&'static str, String)> {
    table::<B>()
        .into_iter()
        .map(|(what, word, call)| {
            let err = call(backend).expect_err(what).to_string();
            assert!(err.contains(word), "{what}: '{word}' not in: {err}");
            (what, err)
        })
        .collect()
}

#[test]
fn both_backends_refuse_the_same_bad_calls_with_the_same_errors() {
    let on_cpu = errors(&CpuBackend);
    let Some(gpu) = common::gpu() else { return };
    let on_gpu = errors(gpu);
    for (cpu, gpu) in on_cpu.iter().zip(&on_gpu) {
        assert_eq!(cpu, gpu);
    }
    // Nothing was recorded for a refused call: the device has no fault to report.
    gpu.flush().unwrap();
}
