//! Convolution, pooling and the flatten transpose: the float64 references against central
//! finite differences, and both backends' kernels against those references (the gathers and
//! pooling exactly, the products within f32 rounding).

#[macro_use]
mod common;

use common::{assert_close, normal};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::gpu::{AdapterRequest, GpuBackend, Tuning};
use wgnorm::graph::Compute;
use wgnorm::ops::matmul::{MatrixLayout, Store};
use wgnorm::ops::spatial::{ImageShape, Window};
use wgnorm::reference::spatial as reference;

/// Shapes and windows the tests cover: padding, strides that skip positions, overlapping and
/// non-square images, a 1×1 kernel.
fn cases() -> Vec<(ImageShape, Window)> {
    let image = |images, height, width, channels| ImageShape {
        images,
        height,
        width,
        channels,
    };
    let window = |kernel, stride, padding| Window {
        kernel,
        stride,
        padding,
    };
    vec![
        (image(2, 6, 6, 3), window(3, 1, 1)),
        (image(3, 7, 5, 2), window(3, 2, 0)),
        (image(2, 5, 6, 4), window(2, 2, 1)),
        (image(1, 4, 4, 5), window(1, 1, 0)),
        (image(2, 8, 7, 1), window(3, 3, 2)),
    ]
}

/// The pooling window of a case (its window without padding, which pooling refuses) and the
/// pooled images, where that window fits.
fn pooling(shape: ImageShape, window: Window) -> Option<(Window, ImageShape)> {
    let pool = Window {
        padding: 0,
        ..window
    };
    Some((pool, pool.output_shape(shape, shape.channels).ok()?))
}

fn uniform(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `analytic` = ∇f at x by central differences (f is linear or piecewise linear here, so the
/// step needs no scaling).
fn check_gradient(what: &str, f: &dyn Fn(&[f64]) -> f64, x: &[f64], analytic: &[f64]) {
    let h = 1e-6;
    for (i, &exact) in analytic.iter().enumerate() {
        let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (f(&plus) - f(&minus)) / (2.0 * h);
        assert!(
            (numeric - exact).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "{what}[{i}]: analytic {exact} vs finite difference {numeric}"
        );
    }
}

#[test]
fn conv2d_reference_gradients_match_finite_differences() {
    let rng = &mut common::rng("conv2d_reference_gradients");
    for (shape, window) in cases() {
        let outputs = 3;
        let x = uniform(rng, shape.numel());
        let w = uniform(rng, outputs * window.patch_len(shape.channels));
        let b = uniform(rng, outputs);
        let rows = window.output_shape(shape, 1).unwrap().numel();
        let dy = uniform(rng, rows * outputs);
        let (dx, dw, db) = reference::conv2d_backward(&x, shape, &w, outputs, window, &dy);
        let what = format!("{shape:?} {window:?}");
        let loss_x = |x: &[f64]| dot(&reference::conv2d(x, shape, &w, &b, window), &dy);
        let loss_w = |w: &[f64]| dot(&reference::conv2d(&x, shape, w, &b, window), &dy);
        let loss_b = |b: &[f64]| dot(&reference::conv2d(&x, shape, &w, b, window), &dy);
        check_gradient(&format!("dx {what}"), &loss_x, &x, &dx);
        check_gradient(&format!("dw {what}"), &loss_w, &w, &dw);
        check_gradient(&format!("db {what}"), &loss_b, &b, &db);
    }
}

#[test]
fn pooling_reference_gradients_match_finite_differences() {
    let rng = &mut common::rng("pooling_reference_gradients");
    for (shape, window) in cases() {
        let Some((window, out)) = pooling(shape, window) else {
            continue;
        };
        // Distinct values, so that no window's maximum is a tie a step could flip.
        let x = uniform(rng, shape.numel());
        let dy = uniform(rng, out.numel());
        let dx = reference::max_pool_backward(&x, shape, window, &dy);
        let loss = |x: &[f64]| dot(&reference::max_pool(x, shape, window), &dy);
        check_gradient(&format!("max pool {shape:?} {window:?}"), &loss, &x, &dx);

        let dy = uniform(rng, shape.images * shape.channels);
        let dx = reference::avg_pool_backward(&dy, shape);
        let loss = |x: &[f64]| dot(&reference::avg_pool(x, shape), &dy);
        check_gradient(&format!("avg pool {shape:?}"), &loss, &x, &dx);
    }
}

fn as_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

/// The convolution as the graph runs it: im2col, the product with the weight read as
/// [out, in·k·k] plus the bias; backward dW and db in one product, dcols = dy·W, col2im.
fn conv_matches_reference<B: Compute>(backend: &B, rng: &mut StdRng) {
    for (shape, window) in cases() {
        let outputs = 4;
        let patch = window.patch_len(shape.channels);
        let rows = window.output_shape(shape, 1).unwrap().numel();
        let x = normal(rng, shape.numel(), 0.3, 1.0);
        let w = normal(rng, outputs * patch, 0.0, 0.5);
        let b = normal(rng, outputs, 0.0, 0.5);
        let dy = normal(rng, rows * outputs, 0.0, 1.0);
        let what = format!("{shape:?} {window:?}");

        let mut cols = backend.scratch(rows * patch).unwrap();
        let xb = backend.upload(&x).unwrap();
        backend.im2col(&xb, shape, window, &mut cols).unwrap();
        let (wb, bb) = (backend.upload(&w).unwrap(), backend.upload(&b).unwrap());
        let mut y = backend.scratch(rows * outputs).unwrap();
        let cols_layout = MatrixLayout::row_major(rows, patch);
        let w_layout = MatrixLayout::row_major(outputs, patch);
        (backend.matmul(
            &cols,
            cols_layout,
            &wb,
            w_layout.transposed(),
            Some(&bb),
            &mut y,
        ))
        .unwrap();
        let y_ref = reference::conv2d(&x, shape, &w, &b, window);
        assert_close(
            &format!("y {what}"),
            &backend.download(&y).unwrap(),
            &y_ref,
            1e-6,
        );

        let (dx_ref, dw_ref, db_ref) =
            reference::conv2d_backward(&x, shape, &w, outputs, window, &dy);
        let dyb = backend.upload(&dy).unwrap();
        let dy_layout = MatrixLayout::row_major(rows, outputs);
        let (mut dw, mut db) = (
            backend.scratch(w.len()).unwrap(),
            backend.scratch(outputs).unwrap(),
        );
        backend
            .matmul_and_row_sums(
                &dyb,
                dy_layout.transposed(),
                &cols,
                cols_layout,
                &mut dw,
                &mut db,
                Store::Replace,
            )
            .unwrap();
        assert_close(
            &format!("dw {what}"),
            &backend.download(&dw).unwrap(),
            &dw_ref,
            1e-6,
        );
        assert_close(
            &format!("db {what}"),
            &backend.download(&db).unwrap(),
            &db_ref,
            1e-6,
        );
        let mut dcols = backend.scratch(rows * patch).unwrap();
        (backend.matmul(&dyb, dy_layout, &wb, w_layout, None, &mut dcols)).unwrap();
        let mut dx = backend.scratch(shape.numel()).unwrap();
        backend.col2im(&dcols, shape, window, &mut dx).unwrap();
        assert_close(
            &format!("dx {what}"),
            &backend.download(&dx).unwrap(),
            &dx_ref,
            1e-6,
        );
    }
}

backend_test!(conv_matches_reference, |backend, rng| {
    conv_matches_reference(backend, rng)
});

/// Pooling and the flatten transpose move or compare values without rounding (the average's
/// one division aside), so they match the references exactly, ties included: the values are
/// drawn from a few levels, as after a ReLU.
fn pooling_and_flatten_match_reference<B: Compute>(backend: &B, rng: &mut StdRng) {
    for (shape, window) in cases() {
        let x: Vec<f32> = (0..shape.numel())
            .map(|_| rng.random_range(0..4) as f32 * 0.5)
            .collect();
        let xb = backend.upload(&x).unwrap();
        let what = format!("{shape:?} {window:?}");
        if let Some((pool, out)) = pooling(shape, window) {
            let y_ref = as_f32(&reference::max_pool(&x, shape, pool));
            let mut y = backend.scratch(out.numel()).unwrap();
            backend
                .max_pool_forward(&xb, shape, pool, &mut y, None)
                .unwrap();
            assert_eq!(backend.download(&y).unwrap(), y_ref, "max pool {what}");
            // The training forward: the same maxima, and where they were.
            let mut y = backend.filled(out.numel(), f32::NAN).unwrap();
            let mut taps = backend.filled(out.numel(), f32::NAN).unwrap();
            backend
                .max_pool_forward(&xb, shape, pool, &mut y, Some(&mut taps))
                .unwrap();
            assert_eq!(backend.download(&y).unwrap(), y_ref, "max pool {what}");
            let dy = normal(rng, out.numel(), 0.0, 1.0);
            let mut dx = backend.scratch(shape.numel()).unwrap();
            let dyb = backend.upload(&dy).unwrap();
            backend
                .max_pool_backward(&taps, &dyb, shape, pool, &mut dx)
                .unwrap();
            let dx_ref = reference::max_pool_backward(&x, shape, pool, &dy);
            assert_close(
                &format!("max pool dx {what}"),
                &backend.download(&dx).unwrap(),
                &dx_ref,
                1e-7,
            );
        }

        let mut y = backend.scratch(shape.images * shape.channels).unwrap();
        backend.avg_pool_forward(&xb, shape, &mut y).unwrap();
        let y_ref = reference::avg_pool(&x, shape);
        assert_close(
            &format!("avg pool {what}"),
            &backend.download(&y).unwrap(),
            &y_ref,
            1e-6,
        );
        let dy = normal(rng, y_ref.len(), 0.0, 1.0);
        let mut dx = backend.scratch(shape.numel()).unwrap();
        backend
            .avg_pool_backward(&backend.upload(&dy).unwrap(), shape, &mut dx)
            .unwrap();
        let dx_ref = reference::avg_pool_backward(&dy, shape);
        assert_close(
            &format!("avg pool dx {what}"),
            &backend.download(&dx).unwrap(),
            &dx_ref,
            1e-6,
        );

        let mut flat = backend.scratch(shape.numel()).unwrap();
        let (positions, channels) = (shape.positions(), shape.channels);
        backend
            .transpose(&xb, shape.images, positions, channels, &mut flat)
            .unwrap();
        let flat_values = backend.download(&flat).unwrap();
        assert_eq!(
            flat_values,
            as_f32(&reference::flatten(&x, shape)),
            "flatten {what}"
        );
        let mut back = backend.scratch(shape.numel()).unwrap();
        backend
            .transpose(&flat, shape.images, channels, positions, &mut back)
            .unwrap();
        assert_eq!(
            backend.download(&back).unwrap(),
            x,
            "flatten round trip {what}"
        );
    }
}

backend_test!(pooling_and_flatten_match_reference, |backend, rng| {
    pooling_and_flatten_match_reference(backend, rng)
});

/// Both backends refuse the same bad calls with the same one-line messages.
fn bad_calls_are_refused<B: Compute>(backend: &B, _rng: &mut StdRng) {
    let shape = ImageShape {
        images: 2,
        height: 4,
        width: 4,
        channels: 3,
    };
    let x = backend.filled(shape.numel(), 1.0).unwrap();
    let too_big = Window {
        kernel: 7,
        stride: 1,
        padding: 1,
    };
    let mut out = backend.scratch(10).unwrap();
    let error = backend.im2col(&x, shape, too_big, &mut out).unwrap_err();
    assert_eq!(
        error.to_string(),
        "shape mismatch: a 7×7 window (padding 1) does not fit a 4×4 image"
    );
    let k3 = Window {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let error = backend.im2col(&x, shape, k3, &mut out).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("im2col cols has 10 values, expected 864"),
        "{error}"
    );
    let error = backend
        .max_pool_forward(&x, shape, k3, &mut out, None)
        .unwrap_err();
    assert!(
        error.to_string().contains("max pooling takes no padding"),
        "{error}"
    );
    let k2 = Window {
        kernel: 2,
        stride: 2,
        padding: 0,
    };
    let mut y = backend.scratch(shape.numel() / 4).unwrap();
    let mut short = backend.scratch(3).unwrap();
    let error = backend
        .max_pool_forward(&x, shape, k2, &mut y, Some(&mut short))
        .unwrap_err();
    assert!(
        error.to_string().contains("max pool taps has 3 values"),
        "{error}"
    );
    let zero = Window {
        kernel: 0,
        stride: 1,
        padding: 0,
    };
    let mut dx = backend.scratch(shape.numel()).unwrap();
    let error = backend.col2im(&out, shape, zero, &mut dx).unwrap_err();
    assert!(error.to_string().contains("positive kernel"), "{error}");
}

backend_test!(bad_calls_are_refused, |backend, rng| {
    bad_calls_are_refused(backend, rng)
});

/// im2col and col2im over `window`, max pool (its maxima and their taps) and its backward over
/// `pool`, on one backend, as bit patterns.
fn spatial_bits<B: Compute>(
    backend: &B,
    x: &[f32],
    shape: ImageShape,
    (window, pool): (Window, Window),
    dcols: &[f32],
    dy: &[f32],
) -> [Vec<u32>; 5] {
    let bits = |buffer: &B::Buffer| -> Vec<u32> {
        let values = backend.download(buffer).unwrap();
        values.into_iter().map(f32::to_bits).collect()
    };
    let xb = backend.upload(x).unwrap();
    let mut cols = backend.scratch(dcols.len()).unwrap();
    backend.im2col(&xb, shape, window, &mut cols).unwrap();
    let mut dx = backend.scratch(shape.numel()).unwrap();
    backend
        .col2im(&backend.upload(dcols).unwrap(), shape, window, &mut dx)
        .unwrap();
    let mut y = backend.scratch(dy.len()).unwrap();
    let mut taps = backend.scratch(dy.len()).unwrap();
    let mut pool_dx = backend.scratch(shape.numel()).unwrap();
    backend
        .max_pool_forward(&xb, shape, pool, &mut y, Some(&mut taps))
        .unwrap();
    let dy = backend.upload(dy).unwrap();
    backend
        .max_pool_backward(&taps, &dy, shape, pool, &mut pool_dx)
        .unwrap();
    [
        bits(&cols),
        bits(&dx),
        bits(&y),
        bits(&taps),
        bits(&pool_dx),
    ]
}

/// The CPU twin promises the GPU's bits: the same comparisons pick the same maxima (ties and
/// NaNs included, in first taps and later ones), and every gradient sum adds the same terms in
/// the same order; on the max-pooling backward's grids of both adapter classes (one channel per
/// thread, all of them) and one that splits the channels unevenly (two per thread).
#[test]
fn backends_agree_bit_for_bit() {
    if common::gpu().is_none() {
        return;
    }
    let gpus = [1, 2, 64].map(|per_thread| {
        let backend = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
        backend.set_tuning(Tuning {
            pool_channels_per_thread: per_thread,
            ..backend.tuning()
        });
        backend
    });
    let mut rng = common::rng("spatial::backends_agree_bit_for_bit");
    for (shape, window) in cases() {
        let Some((pool, pooled)) = pooling(shape, window) else {
            continue;
        };
        let x: Vec<f32> = (0..shape.numel())
            .map(|i| match i % 11 {
                3 => f32::NAN,
                _ => rng.random_range(0..4) as f32 * 0.5,
            })
            .collect();
        let patches = window.output_shape(shape, 1).unwrap().numel();
        let dcols = normal(
            &mut rng,
            patches * window.patch_len(shape.channels),
            0.0,
            1.0,
        );
        let dy = normal(&mut rng, pooled.numel(), 0.0, 1.0);
        let on_cpu = spatial_bits(
            &wgnorm::cpu::CpuBackend,
            &x,
            shape,
            (window, pool),
            &dcols,
            &dy,
        );
        for gpu in &gpus {
            let on_gpu = spatial_bits(gpu, &x, shape, (window, pool), &dcols, &dy);
            let names = [
                "im2col",
                "col2im",
                "max pool",
                "max pool taps",
                "max pool dx",
            ];
            for (name, (cpu, gpu)) in names.iter().zip(on_cpu.iter().zip(&on_gpu)) {
                assert!(
                    cpu == gpu,
                    "{name} {shape:?} {window:?}: the CPU's bits differ from the GPU's"
                );
            }
        }
    }
}
