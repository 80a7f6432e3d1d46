//! `wgnorm bn` and `wgnorm devices` as a user runs them: files in, files out, one-line errors.

mod common;

use common::{assert_close, assert_one_line_error, channel_data, gpu, normal, rng, wgnorm};
use wgnorm::data::npy;
use wgnorm::ops::batchnorm::BatchNormShape;
use wgnorm::reference::batchnorm as reference;

/// Runs `wgnorm bn` and checks every output. With `--dtype f16` on a device that stores f16,
/// x and dy are rounded to f16 on the way in and y and dx on the way out: the reference runs on
/// the rounded inputs and y and dx get the f16 tolerance of tests/batchnorm.rs.
fn run_and_check(device: &str, dtype: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rng(&format!("cli_bn_{device}"));
    let (n, c, h, w) = (5, 3, 4, 2);
    let shape = BatchNormShape::new(n, c, h * w);
    let x = channel_data(&mut rng, n, c, h * w);
    let dy = normal(&mut rng, x.len(), 0.0, 1.0);
    let gamma = normal(&mut rng, c, 1.0, 0.2);
    let beta = normal(&mut rng, c, 0.0, 1.0);
    let running_var = vec![2.0f32; c];
    let path = |name: &str| dir.path().join(name);
    npy::write(&path("x.npy"), &[n, c, h, w], &x).unwrap();
    npy::write(&path("dy.npy"), &[n, c, h, w], &dy).unwrap();
    npy::write(&path("g.npy"), &[c], &gamma).unwrap();
    npy::write(&path("b.npy"), &[c], &beta).unwrap();
    npy::write(&path("rv.npy"), &[c], &running_var).unwrap();
    let output = wgnorm(
        &[
            "bn",
            "--x",
            "x.npy",
            "--dy",
            "dy.npy",
            "--gamma",
            "g.npy",
            "--beta",
            "b.npy",
            "--running-var",
            "rv.npy",
            "--momentum",
            "0.2",
            "--device",
            device,
            "--dtype",
            dtype,
            "--out",
            "out",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let stored_f16 = dtype == "f16" && !stderr.contains("running in F32");
    let (x, dy) = if stored_f16 {
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        (round(&x), round(&dy))
    } else {
        (x, dy)
    };
    let activation_tolerance = if stored_f16 { 2e-3 } else { 1e-5 };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ran on:"), "{stdout}");

    let read = |name: &str| npy::read(&path(&format!("out/{name}.npy"))).unwrap();
    let expected = reference::forward_train(
        &x,
        shape,
        &gamma,
        &beta,
        &vec![0.0; c],
        &running_var,
        1e-5,
        0.2,
    );
    let y = read("y");
    assert_eq!(y.shape, vec![n, c, h, w]);
    assert_close("y", &y.data, &expected.y, activation_tolerance);
    assert_close("mean", &read("mean").data, &expected.mean, 1e-5);
    assert_close("var", &read("var").data, &expected.var, 1e-5);
    assert_close("invstd", &read("invstd").data, &expected.invstd, 1e-5);
    assert_close(
        "running_mean",
        &read("running_mean").data,
        &expected.running_mean,
        1e-5,
    );
    assert_close(
        "running_var",
        &read("running_var").data,
        &expected.running_var,
        1e-5,
    );
    let grads = reference::backward(&x, &dy, shape, &gamma, 1e-5);
    let dx = read("dx");
    assert_eq!(dx.shape, vec![n, c, h, w]);
    assert_close("dx", &dx.data, &grads.dx, activation_tolerance.max(1e-4));
    assert_close("dgamma", &read("dgamma").data, &grads.dgamma, 1e-4);
    assert_close("dbeta", &read("dbeta").data, &grads.dbeta, 1e-4);
    stderr
}

#[test]
fn bn_on_cpu_writes_every_output_matching_the_reference() {
    run_and_check("cpu", "f32");
}

#[test]
fn bn_f16_on_cpu_says_it_runs_in_f32() {
    let stderr = run_and_check("cpu", "f16");
    assert!(
        stderr.contains("note: cpu cannot store F16; running in F32"),
        "{stderr}"
    );
}

#[test]
fn bn_f16_on_gpu_matches_the_reference_within_the_f16_tolerance() {
    let Some(gpu) = gpu() else { return };
    let stderr = run_and_check("gpu", "f16");
    assert_eq!(
        !stderr.contains("running in F32"),
        gpu.has_f16(),
        "{stderr}"
    );
}

#[test]
fn bn_on_gpu_writes_every_output_matching_the_reference() {
    if gpu().is_none() {
        return;
    }
    run_and_check("gpu", "f32");
}

#[test]
fn devices_lists_the_adapter() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = wgnorm(&["devices"], dir.path());
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&gpu.adapter().name), "{stdout}");
}

#[test]
fn bad_inputs_are_one_line_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    npy::write(&at("x.npy"), &[4, 3], &[1.0; 12]).unwrap();
    npy::write(&at("one.npy"), &[1, 3], &[1.0; 3]).unwrap();
    npy::write(&at("flat.npy"), &[12], &[1.0; 12]).unwrap();
    npy::write(&at("g4.npy"), &[4], &[1.0; 4]).unwrap();
    npy::write(&at("dy.npy"), &[3, 4], &[1.0; 12]).unwrap();
    std::fs::write(at("junk.npy"), b"not numpy").unwrap();
    npyz::to_file_1d(at("int.npy"), [1i32, 2, 3, 4, 5, 6]).unwrap();
    let c_order = std::fs::read(at("x.npy")).unwrap();
    std::fs::write(at("short.npy"), &c_order[..c_order.len() - 4]).unwrap();
    // The same bytes, with the header saying they are column-major (same header length).
    let (c_flag, f_flag) = (b"'fortran_order': False", b"'fortran_order': True ");
    let at_flag = c_order
        .windows(c_flag.len())
        .position(|w| w == c_flag)
        .expect("npyz writes fortran_order");
    let mut fortran = c_order.clone();
    fortran[at_flag..at_flag + f_flag.len()].copy_from_slice(f_flag);
    std::fs::write(at("fortran.npy"), fortran).unwrap();
    // A header that is not a Python literal: the parser's multi-line report is cut to one line.
    let mut syntax = c_order.clone();
    let at_shape = syntax.windows(8).position(|w| w == b"'shape':").unwrap();
    syntax[at_shape] = b'?';
    std::fs::write(at("syntax.npy"), syntax).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["bn", "--x", "missing.npy", "--out", "o", "--device", "cpu"],
            "missing.npy",
        ),
        (
            &["bn", "--x", "junk.npy", "--out", "o", "--device", "cpu"],
            "not a valid .npy file",
        ),
        (
            &["bn", "--x", "int.npy", "--out", "o", "--device", "cpu"],
            "dtype '<i4' is not supported; use float32, float64 or float16",
        ),
        (
            &["bn", "--x", "short.npy", "--out", "o", "--device", "cpu"],
            "truncated: the header promises 12 values of '<f4' (48 bytes) but the file holds 44",
        ),
        (
            &["bn", "--x", "syntax.npy", "--out", "o", "--device", "cpu"],
            "syntax.npy: not a valid .npy file: could not parse Python expression",
        ),
        (
            &["bn", "--x", "fortran.npy", "--out", "o", "--device", "cpu"],
            "Fortran-order arrays are not supported",
        ),
        (
            &["bn", "--x", "flat.npy", "--out", "o", "--device", "cpu"],
            "(N, C)",
        ),
        (
            &["bn", "--x", "one.npy", "--out", "o", "--device", "cpu"],
            "more than 1 value per channel",
        ),
        (
            &[
                "bn", "--x", "x.npy", "--gamma", "g4.npy", "--out", "o", "--device", "cpu",
            ],
            "expected (3,)",
        ),
        (
            &[
                "bn", "--x", "x.npy", "--dy", "dy.npy", "--out", "o", "--device", "cpu",
            ],
            "expected x's shape",
        ),
        (
            &[
                "bn", "--x", "x.npy", "--eps", "-1", "--out", "o", "--device", "cpu",
            ],
            "eps",
        ),
        (
            &["bn", "--x", "x.npy", "--out", "o", "--device", "tpu"],
            "tpu",
        ),
        (
            &["bn", "--x", "x.npy", "--out", "o", "--frobnicate"],
            "--frobnicate",
        ),
    ];
    for (args, needle) in cases {
        let output = wgnorm(args, dir.path());
        assert_one_line_error(&output, 2, needle);
    }
    assert!(!at("o").exists(), "a failed run must not leave outputs");
}

#[test]
fn an_adapter_that_matches_nothing_lists_what_exists() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    npy::write(
        &dir.path().join("x.npy"),
        &[4, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0],
    )
    .unwrap();
    let output = wgnorm(
        &[
            "bn",
            "--x",
            "x.npy",
            "--out",
            "o",
            "--device",
            "gpu",
            "--adapter",
            "no-such-gpu",
        ],
        dir.path(),
    );
    assert_one_line_error(&output, 2, &gpu.adapter().name);
}

/// With every Vulkan driver hidden, `--device gpu` says how to get an adapter and `--device
/// auto` falls back to the CPU with a notice.
#[test]
fn no_adapter_with_device_gpu_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    npy::write(
        &dir.path().join("x.npy"),
        &[4, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0],
    )
    .unwrap();
    let without_drivers = |device: &str| {
        let nowhere = dir.path().join("no-such-driver.json");
        common::wgnorm_command(
            &["bn", "--x", "x.npy", "--out", device, "--device", device],
            dir.path(),
        )
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_DRIVER_FILES", &nowhere)
        .env("VK_ICD_FILENAMES", &nowhere)
        .output()
        .unwrap()
    };
    let output = without_drivers("gpu");
    assert_one_line_error(&output, 2, "no GPU adapter found");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("apt-get install mesa-vulkan-drivers libvulkan1")
            && stderr.contains("--device cpu"),
        "{stderr}"
    );
    assert!(!dir.path().join("gpu").exists());
    let output = without_drivers("auto");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("device: cpu (auto: no GPU adapter found)"),
        "{stderr}"
    );
    assert!(dir.path().join("auto").join("y.npy").exists());
}
