//! Helpers shared by the integration tests: the GPU under test, seeded random inputs and the
//! error measure.

#![allow(dead_code, unused_macros)]

pub mod replicas;

/// One test body, two tests: `backend_test!(name, |backend, rng| body)` expands into
/// `name::cpu` on the CPU backend and `name::gpu` on the GPU under test, each with its own
/// seeded generator. The body is written once and type-checked for each backend.
macro_rules! backend_test {
    ($name:ident, |$backend:ident, $rng:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            #[allow(unused_variables)]
            fn cpu() {
                let $backend = &wgnorm::cpu::CpuBackend;
                let $rng = &mut crate::common::rng(concat!(stringify!($name), "::cpu"));
                $body
            }

            #[test]
            #[allow(unused_variables)]
            fn gpu() {
                let Some($backend) = crate::common::gpu() else {
                    return;
                };
                let $rng = &mut crate::common::rng(concat!(stringify!($name), "::gpu"));
                $body
            }
        }
    };
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::ops::activation::DropoutMask;
use wgnorm::ops::matmul::MatrixLayout;
use wgnorm::reference;

/// The GPU backend shared by every test of a binary, or None (with the reason printed) when no
/// adapter exists. Under CI=true a missing adapter fails the test instead.
pub fn gpu() -> Option<&'static GpuBackend> {
    static GPU: OnceLock<Option<GpuBackend>> = OnceLock::new();
    GPU.get_or_init(
        || match GpuBackend::new(&AdapterRequest::from_flag_or_env(None)) {
            Ok(gpu) => {
                eprintln!("GPU tests run on {}", gpu.adapter());
                Some(gpu)
            }
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true requires a GPU adapter for the GPU tests: {e}")
            }
            Err(e) => {
                eprintln!("skipping GPU tests: {e}");
                None
            }
        },
    )
    .as_ref()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The GPU under test where it can store f16. Where it cannot, an f16 test cannot run: it says
/// so, and checks that f16 is refused by name instead. Under CI=true that fails the test,
/// unless WGNORM_TEST_NO_F16=1 declares that this run's adapter lacks shader-f16 (CI's
/// SwiftShader run).
pub fn gpu_with_f16() -> Option<&'static GpuBackend> {
    let gpu = gpu()?;
    let declared = std::env::var("WGNORM_TEST_NO_F16").is_ok_and(|v| v == "1");
    if gpu.has_f16() {
        assert!(
            !declared,
            "WGNORM_TEST_NO_F16=1, but {} offers shader-f16",
            gpu.adapter()
        );
        return Some(gpu);
    }
    assert!(
        declared || !ci(),
        "CI=true: {} lacks shader-f16, so this f16 test cannot run (set WGNORM_TEST_NO_F16=1 \
         where that is expected)",
        gpu.adapter()
    );
    let err = wgnorm::Backend::upload_as(gpu, &[1.0], wgnorm::Dtype::F16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shader-f16"), "{err}");
    eprintln!("cannot run: {} refuses f16 ({err})", gpu.adapter());
    None
}

/// The seed every test draws its inputs from when WGNORM_TEST_SEED is unset, so that a run
/// of the suite is reproducible (CI's included).
pub const DEFAULT_TEST_SEED: u64 = 0;

/// WGNORM_TEST_SEED, or `DEFAULT_TEST_SEED`; `tests/seeds.sh` runs a test over many. A value
/// that is not a number fails the test rather than quietly testing the default.
pub fn test_seed() -> u64 {
    match std::env::var("WGNORM_TEST_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WGNORM_TEST_SEED={text:?} is not a u64")),
        Err(_) => DEFAULT_TEST_SEED,
    }
}

/// A generator seeded with `test_seed()`; the seed is printed (the harness shows it when the
/// test fails), so a failure can be replayed with WGNORM_TEST_SEED.
pub fn rng(test: &str) -> StdRng {
    let seed = test_seed();
    eprintln!("{test}: WGNORM_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Values per channel drawn from N(mean_c, std_c²), with channel means of magnitude 1..3 and
/// spreads 0.5..2, so every channel has a mean and a spread of its own.
pub fn channel_data(rng: &mut StdRng, n: usize, c: usize, s: usize) -> Vec<f32> {
    let params: Vec<(f32, f32)> = (0..c)
        .map(|_| {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            (
                sign * rng.random_range(1.0..3.0),
                rng.random_range(0.5..2.0),
            )
        })
        .collect();
    let unit = Normal::new(0.0f32, 1.0).unwrap();
    let mut x = Vec::with_capacity(n * c * s);
    for _ in 0..n {
        for &(mean, std) in &params {
            for _ in 0..s {
                x.push(mean + std * unit.sample(rng));
            }
        }
    }
    x
}

pub fn normal(rng: &mut StdRng, len: usize, mean: f32, std: f32) -> Vec<f32> {
    let dist = Normal::new(mean, std).unwrap();
    (0..len).map(|_| dist.sample(rng)).collect()
}

/// ‖out − reference‖ / ‖reference‖, or ‖out‖ when the reference is all zeros.
pub fn normwise_error(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length");
    let mut diff = 0.0;
    let mut norm = 0.0;
    for (&o, &r) in out.iter().zip(reference) {
        let o = o as f64;
        if !o.is_finite() {
            return f64::INFINITY;
        }
        diff += (o - r) * (o - r);
        norm += r * r;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Like `assert_close`, but the error may also be measured against `scale`, the size of the
/// terms that cancel to give the result. Where they cancel almost completely, no f32 arithmetic
/// gets the result to a small relative error, and the achievable bound is relative to those
/// terms: BatchNorm's dx at m = 2 is eps/(var+eps) ≈ 1e-5 of them; a running-mean update
/// 0.9·r + 0.1·mean or a sum Σdy over a few values can cancel for some random inputs.
pub fn assert_close_to_terms(
    what: &str,
    out: &[f32],
    reference: &[f64],
    scale: f64,
    tolerance: f64,
) {
    assert_eq!(out.len(), reference.len(), "length");
    let error = out
        .iter()
        .zip(reference)
        .map(|(&o, r)| (o as f64 - r).powi(2))
        .sum::<f64>()
        .sqrt();
    let bound = tolerance * norm(reference).max(scale);
    assert!(
        error <= bound, // false for NaN; an exact 0 where the reference is 0 passes
        "{what}: error {error:.3e} exceeds {tolerance:.0e} x max(|ref| {:.3e}, |terms| {scale:.3e})",
        norm(reference)
    );
}

pub fn norm(values: &[f64]) -> f64 {
    values.iter().map(|v| v * v).sum::<f64>().sqrt()
}

pub fn assert_close(what: &str, out: &[f32], reference: &[f64], tolerance: f64) {
    let error = normwise_error(out, reference);
    assert!(
        error < tolerance,
        "{what}: normwise relative error {error:.3e} exceeds {tolerance:.0e}"
    );
}

/// The real MNIST files in ../shared/data/mnist, or None (printed) when absent. Under CI=true
/// they must be there.
pub fn shared_mnist() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true needs ../shared/data/mnist"
    );
    eprintln!("skipping: {} not found", dir.display());
    None
}

/// The wgnorm binary with `args`, to run in `dir`.
pub fn wgnorm_command(args: &[&str], dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wgnorm"));
    command
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir);
    command
}

/// wgnorm started in `dir` with stdout discarded and stderr captured, for signalling.
pub fn spawn_wgnorm(args: &[&str], dir: &Path) -> std::process::Child {
    wgnorm_command(args, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the wgnorm binary starts")
}

/// Runs the wgnorm binary in `dir`.
pub fn wgnorm(args: &[&str], dir: &Path) -> Output {
    wgnorm_command(args, dir)
        .output()
        .expect("the wgnorm binary runs")
}

/// Runs wgnorm in `dir`, failing the test with its stderr unless it succeeds.
pub fn wgnorm_ok(args: &[&str], dir: &Path) -> Output {
    let output = wgnorm(args, dir);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `wgnorm train --device cpu --data-dir data --out run` with `extra`, in `dir` (for runs
/// expected to be refused).
pub fn train_cpu_run(data: &str, dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--device",
        "cpu",
        "--data-dir",
        data,
        "--out",
        "run",
    ];
    args.extend_from_slice(extra);
    wgnorm(&args, dir)
}

/// One epoch of `model` on the CPU backend over the first `images` training images of `data`,
/// into `dir/out`.
pub fn train_on_cpu(dir: &Path, data: &str, model: &str, images: &str, out: &str, extra: &[&str]) {
    // A preset's name, or an `--arch` spec (which has commas).
    let flag = if model.contains(',') {
        "--arch"
    } else {
        "--model"
    };
    let mut args = vec![
        "train",
        "--device",
        "cpu",
        flag,
        model,
        "--epochs",
        "1",
        "--train-limit",
        images,
        "--data-dir",
        data,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    wgnorm_ok(&args, dir);
}

/// `wgnorm eval --device cpu --json` of the model file `model`: test accuracy and loss.
pub fn eval_on_cpu(model: &str, data: &str, dir: &Path) -> (f64, f64) {
    let args = [
        "eval",
        "--device",
        "cpu",
        "--checkpoint",
        model,
        "--data-dir",
        data,
        "--json",
    ];
    let json: serde_json::Value = serde_json::from_slice(&wgnorm_ok(&args, dir).stdout).unwrap();
    (
        json["test_acc"].as_f64().unwrap(),
        json["test_loss"].as_f64().unwrap(),
    )
}

/// The error lines wgnorm printed (Mesa may add its own notices on stderr).
pub fn assert_one_line_error(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(ours.len(), 1, "expected one error line, got: {stderr}");
    assert!(ours[0].contains(needle), "'{needle}' not in: {}", ours[0]);
    // A message that went on over more lines would leave them after its first.
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    assert_eq!(
        last,
        Some(ours[0]),
        "the error is not the last line: {stderr}"
    );
}

/// The size of every figure wgnorm draws (the binary's `plot::WIDTH`/`HEIGHT`).
pub const PLOT_SIZE: (u32, u32) = (1200, 800);

/// A PNG the binary drew: the figure's size, and curves in it: at least `min_colored` pixels
/// whose channels differ (the background, the grid, axes and text are all grey), at least
/// one in each half of the figure where `panels` > 1.
pub fn assert_png_shows_curves(path: &Path, panels: usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ));
    let mut reader = decoder.read_info().unwrap();
    let (width, height) = (reader.info().width, reader.info().height);
    assert_eq!((width, height), PLOT_SIZE, "{}", path.display());
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    assert!(channels >= 3, "{}: not an RGB image", path.display());
    let colored: Vec<u32> = pixels[..frame.buffer_size()]
        .chunks_exact(channels)
        .enumerate()
        .filter(|(_, p)| p[0].abs_diff(p[1]) > 40 || p[1].abs_diff(p[2]) > 40)
        .map(|(i, _)| i as u32 % width)
        .collect();
    assert!(
        colored.len() >= 500,
        "{}: only {} colored pixels: no curve was drawn",
        path.display(),
        colored.len()
    );
    if panels > 1 {
        for half in [0..width / 2, width / 2..width] {
            assert!(
                colored.iter().any(|x| half.contains(x)),
                "{}: no curve in columns {half:?}",
                path.display()
            );
        }
    }
}

/// Which of the first `len` elements `mask` keeps.
pub fn keeps(mask: &DropoutMask, len: usize) -> Vec<bool> {
    (0..len as u32).map(|i| mask.keeps(i)).collect()
}

pub fn f64s(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// y = x·Wᵀ + b for `rows` rows of `inputs` features.
pub fn linear_forward(x: &[f64], w: &[f64], b: &[f64], rows: usize, inputs: usize) -> Vec<f64> {
    let outputs = b.len();
    reference::matmul::matmul(
        x,
        MatrixLayout::row_major(rows, inputs),
        w,
        MatrixLayout::row_major(outputs, inputs).transposed(),
        Some(b),
    )
}

/// (dx, dW, db) of y = x·Wᵀ + b for upstream dy.
pub fn linear_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    rows: usize,
    inputs: usize,
    outputs: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dy_layout = MatrixLayout::row_major(rows, outputs);
    let none: Option<&[f64]> = None;
    let dx = reference::matmul::matmul(
        dy,
        dy_layout,
        w,
        MatrixLayout::row_major(outputs, inputs),
        none,
    );
    let dw = reference::matmul::matmul(
        dy,
        dy_layout.transposed(),
        x,
        MatrixLayout::row_major(rows, inputs),
        none,
    );
    let db = (0..outputs)
        .map(|j| (0..rows).map(|r| dy[r * outputs + j]).sum())
        .collect();
    (dx, dw, db)
}
