//! The strided matmul on both backends against the float64 reference, in the three forms a
//! Linear layer needs: forward X·Wᵀ + b, and backward dY·W and dYᵀ·X.

#[macro_use]
mod common;

use common::{assert_close, assert_close_to_terms, gpu, norm, normal, rng};
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend, Kernel, MatmulSchedule};
use wgnorm::ops::matmul::{MATMUL_K_STEP, MatmulOps, MatrixLayout, Store};
use wgnorm::reference::matmul as reference;
use wgnorm::{Backend, Dtype};

/// Checks the three Linear products for a batch of `batch` rows, `inputs` → `outputs`, with
/// both operands and the result stored as `dtype` (the bias stays f32). For f16 the reference
/// runs on the f16-rounded operands, and the result, rounded once to f16, gets 2e-3.
fn check_linear<B: MatmulOps>(
    backend: &B,
    rng: &mut rand::rngs::StdRng,
    batch: usize,
    inputs: usize,
    outputs: usize,
    dtype: Dtype,
) {
    let label = format!(
        "{} batch {batch}, {inputs} -> {outputs}, {dtype:?}",
        backend.describe()
    );
    let stored = |v: Vec<f32>| -> Vec<f32> {
        match dtype {
            Dtype::F32 => v,
            Dtype::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        }
    };
    let x = stored(normal(rng, batch * inputs, 0.5, 1.0));
    let w = stored(normal(rng, outputs * inputs, 0.0, 0.1));
    let bias = normal(rng, outputs, 0.0, 1.0);
    let dy = stored(normal(rng, batch * outputs, 0.0, 1.0));
    let upload = |v: &[f32]| backend.upload_as(v, dtype).unwrap();
    let (xb, wb, dyb) = (upload(&x), upload(&w), upload(&dy));
    let biasb = backend.upload(&bias).unwrap();

    let x_layout = MatrixLayout::row_major(batch, inputs);
    let w_layout = MatrixLayout::row_major(outputs, inputs);
    let dy_layout = MatrixLayout::row_major(batch, outputs);
    let cases = [
        (
            "y = x·wᵀ + b",
            &xb,
            x_layout,
            &x,
            &wb,
            w_layout.transposed(),
            &w,
            Some((&biasb, &bias)),
        ),
        ("dx = dy·w", &dyb, dy_layout, &dy, &wb, w_layout, &w, None),
        (
            "dw = dyᵀ·x",
            &dyb,
            dy_layout.transposed(),
            &dy,
            &xb,
            x_layout,
            &x,
            None,
        ),
    ];
    for (what, a, a_layout, a_host, b, b_layout, b_host, bias) in cases {
        let mut out = backend
            .upload_as(&vec![f32::NAN; a_layout.rows * b_layout.cols], dtype)
            .unwrap();
        backend
            .matmul(
                a,
                a_layout,
                b,
                b_layout,
                bias.map(|(device, _)| device),
                &mut out,
            )
            .unwrap();
        let expected = reference::matmul(
            a_host,
            a_layout,
            b_host,
            b_layout,
            bias.map(|(_, host)| host.as_slice()),
        );
        // Σ|a||b| + |bias|: where a sum of few products cancels (a 1×1×1 product beside its
        // bias, say), no f32 result is relatively close to the tiny true value, only to these.
        let abs = |v: &[f32]| -> Vec<f32> { v.iter().map(|x| x.abs()).collect() };
        let abs_bias = bias.map(|(_, host)| abs(host));
        let terms = reference::matmul(
            &abs(a_host),
            a_layout,
            &abs(b_host),
            b_layout,
            abs_bias.as_deref(),
        );
        assert_close_to_terms(
            &format!("{label}: {what}"),
            &backend.download(&out).unwrap(),
            &expected,
            norm(&terms),
            if dtype == Dtype::F16 { 2e-3 } else { 1e-5 },
        );
    }
}

fn all_sizes<B: MatmulOps>(backend: &B, test: &str) {
    let mut rng = rng(test);
    for batch in [1, 7, 33] {
        for inputs in [1, 5, 64] {
            for outputs in [1, 10, 37] {
                check_linear(backend, &mut rng, batch, inputs, outputs, Dtype::F32);
            }
        }
    }
    // The reference MLP's layers.
    check_linear(backend, &mut rng, 32, 784, 128, Dtype::F32);
    check_linear(backend, &mut rng, 256, 128, 10, Dtype::F32);
}

fn rejects_mismatched_shapes<B: MatmulOps>(backend: &B) {
    let a = backend.filled(6, 1.0).unwrap();
    let b = backend.filled(6, 1.0).unwrap();
    let mut out = backend.filled(4, 0.0).unwrap();
    let err = backend
        .matmul(
            &a,
            MatrixLayout::row_major(2, 3),
            &b,
            MatrixLayout::row_major(2, 3),
            None,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("inner dimensions"), "{err}");
    let err = backend
        .matmul(
            &a,
            MatrixLayout::row_major(3, 3),
            &b,
            MatrixLayout::row_major(3, 2),
            None,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let mut sums = backend.filled(3, 0.0).unwrap();
    let err = backend
        .matmul_and_row_sums(
            &a,
            MatrixLayout::row_major(2, 3),
            &b,
            MatrixLayout::row_major(3, 2),
            &mut out,
            &mut sums,
            Store::Replace,
        )
        .unwrap_err();
    assert!(err.to_string().contains("row sums"), "{err}");
}

#[test]
fn gpu_matmul_refuses_an_operand_beyond_the_binding_limit() {
    if gpu().is_none() {
        return;
    }
    // A backend of its own plans with a 64 KiB binding limit, so this runs on every adapter.
    let gpu = &GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    gpu.set_max_binding_for_tests(64 << 10);
    let rows = (gpu.max_binding() / 4 + 64) as usize;
    let a = gpu.filled(rows, 1.0).unwrap();
    let b = gpu.filled(1, 1.0).unwrap();
    let mut out = gpu.filled(rows, 0.0).unwrap();
    let err = gpu
        .matmul(
            &a,
            MatrixLayout::row_major(rows, 1),
            &b,
            MatrixLayout::row_major(1, 1),
            None,
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, wgnorm::Error::Limit(_)), "{err}");
    assert!(
        err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

backend_test!(matmul_matches_reference, |backend, rng| {
    all_sizes(backend, "matmul_matches_reference");
    rejects_mismatched_shapes(backend);
    accumulates_over_batches(backend, rng);
});

/// A weight gradient dW = dYᵀ·X and its bias gradient summed over a batch in three parts, the
/// first replacing what the outputs held (NaN here) and the others adding to it, matches the
/// reference over the whole batch: on the GPU the vec4, the scalar and the split kernels.
fn accumulates_over_batches<B: MatmulOps>(backend: &B, rng: &mut rand::rngs::StdRng) {
    for (rows, outputs, inputs) in [(96, 32, 64), (99, 7, 9), (2400, 32, 128)] {
        let dy = normal(rng, rows * outputs, 0.0, 1.0);
        let x = normal(rng, rows * inputs, 0.0, 1.0);
        let dy_layout = MatrixLayout::row_major(rows, outputs).transposed();
        let x_layout = MatrixLayout::row_major(rows, inputs);
        let expected = reference::matmul(&dy, dy_layout, &x, x_layout, None::<&[f32]>);
        let expected_sums: Vec<f64> = (0..outputs)
            .map(|j| (0..rows).map(|i| f64::from(dy[i * outputs + j])).sum())
            .collect();
        let mut dw = backend.filled(outputs * inputs, f32::NAN).unwrap();
        let mut db = backend.filled(outputs, f32::NAN).unwrap();
        let parts = [0, rows / 3, rows / 2, rows];
        for (part, bounds) in parts.windows(2).enumerate() {
            let part_rows = bounds[1] - bounds[0];
            let dy_part = backend
                .upload(&dy[bounds[0] * outputs..bounds[1] * outputs])
                .unwrap();
            let x_part = backend
                .upload(&x[bounds[0] * inputs..bounds[1] * inputs])
                .unwrap();
            let store = if part == 0 {
                Store::Replace
            } else {
                Store::Add
            };
            backend
                .matmul_and_row_sums(
                    &dy_part,
                    MatrixLayout::row_major(part_rows, outputs).transposed(),
                    &x_part,
                    MatrixLayout::row_major(part_rows, inputs),
                    &mut dw,
                    &mut db,
                    store,
                )
                .unwrap();
        }
        let case = format!("{rows} rows, {outputs}x{inputs}, in three parts");
        assert_close(&case, &backend.download(&dw).unwrap(), &expected, 1e-5);
        assert_close(
            &format!("{case}: row sums"),
            &backend.download(&db).unwrap(),
            &expected_sums,
            1e-5,
        );
    }
}

/// All kernels, each schedule on a backend of its own (the shared one keeps its default): each
/// matches the reference, and they agree bit for bit, since they sum in the same order, except
/// where the tiled kernel splits k (a few blocks with a long k; the 32×784×128 product must be
/// split), which sums in another order. Every vec4 orientation (each operand read along k or
/// along its other dimension) is exercised, and layouts the vec4 kernel cannot take fall back to
/// the scalar one.
#[test]
fn gpu_matmul_schedules_match_the_reference_and_each_other() {
    if gpu().is_none() {
        return;
    }
    let open = |schedule| {
        let backend = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
        backend.set_matmul_schedule(schedule);
        backend
    };
    let registers = open(MatmulSchedule::Registers);
    let tiles = open(MatmulSchedule::WorkgroupTiles);
    all_sizes(&registers, "gpu_matmul_registers");
    all_sizes(&tiles, "gpu_matmul_tiles");
    let mut rng = rng("gpu_matmul_schedules_agree");
    accumulates_over_batches(&tiles, &mut rng);
    let mut split_cases = 0;
    // Sizes on and off the 32×32 and 16×16 blocks, the 16-value k steps and the 4-wide vectors.
    for (m, k, n) in [
        (32, 784, 128),
        (33, 17, 65),
        (52, 12, 40),
        (128, 32, 784),
        (1, 15, 10),
        (36, 8, 12),
    ] {
        let a = normal(&mut rng, m * k, 0.0, 1.0);
        let b = normal(&mut rng, k * n, 0.0, 1.0);
        let reference = reference::matmul(
            &a,
            MatrixLayout::row_major(m, k),
            &b,
            MatrixLayout::row_major(k, n),
            None::<&[f32]>,
        );
        for (a_stored_transposed, b_stored_transposed) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            // The same matrices stored either way round, read through a transposed layout.
            let (a_data, a_layout) = stored(&a, m, k, a_stored_transposed);
            let (b_data, b_layout) = stored(&b, k, n, b_stored_transposed);
            // vec4s run along k, or along a's rows / b's columns where those are contiguous.
            let aligned = k % 4 == 0
                && (!a_stored_transposed || m % 4 == 0)
                && (b_stored_transposed || n % 4 == 0);
            let expected = if aligned {
                Kernel::MatmulVec4
            } else {
                Kernel::Matmul
            };
            let case = format!(
                "{m}x{k} by {k}x{n}, a transposed {a_stored_transposed}, b transposed {b_stored_transposed}"
            );
            assert_eq!(
                registers.matmul_kernel(a_layout, b_layout),
                expected,
                "{case}"
            );
            assert_eq!(tiles.matmul_kernel(a_layout, b_layout), Kernel::MatmulTiled);
            let (r, r_sums) =
                product_and_row_sums(&registers, &a_data, a_layout, &b_data, b_layout);
            let (t, t_sums) = product_and_row_sums(&tiles, &a_data, a_layout, &b_data, b_layout);
            let (c, c_sums) =
                product_and_row_sums(&CpuBackend, &a_data, a_layout, &b_data, b_layout);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (splits, k_split) = tiles.matmul_splits(a_layout, b_layout);
            if splits == 1 {
                assert_eq!(bits(&r), bits(&t), "{case}");
                assert_eq!(bits(&r_sums), bits(&t_sums), "{case}: row sums");
            } else {
                split_cases += 1;
                assert!(
                    k_split % MATMUL_K_STEP == 0 && (splits - 1) * k_split < k,
                    "{case}"
                );
                assert_close(&format!("{case}, split"), &t, &reference, 1e-5);
            }
            assert_close(&case, &r, &reference, 1e-5);
            // The row sums add k in the same order on every unsplit schedule and on the CPU.
            assert_eq!(bits(&r_sums), bits(&c_sums), "{case}: row sums, CPU");
            assert_close(&case, &c, &reference, 1e-5);
            let sums_reference: Vec<f64> = (a.chunks(k))
                .map(|row| row.iter().map(|&v| f64::from(v)).sum())
                .collect();
            let sums_terms: Vec<f64> = (a.chunks(k))
                .map(|row| row.iter().map(|&v| f64::from(v).abs()).sum())
                .collect();
            for (schedule, sums) in [("registers", &r_sums), ("tiles", &t_sums)] {
                assert_close_to_terms(
                    &format!("{case}: row sums, {schedule}"),
                    sums,
                    &sums_reference,
                    norm(&sums_terms),
                    1e-5,
                );
            }
        }
    }
    assert!(split_cases > 0, "no product was split over k");
}

/// a·b and the row sums of a, in one `matmul_and_row_sums`.
fn product_and_row_sums<B: MatmulOps>(
    backend: &B,
    a: &[f32],
    a_layout: MatrixLayout,
    b: &[f32],
    b_layout: MatrixLayout,
) -> (Vec<f32>, Vec<f32>) {
    let mut out = backend
        .filled(a_layout.rows * b_layout.cols, f32::NAN)
        .unwrap();
    let mut sums = backend.filled(a_layout.rows, f32::NAN).unwrap();
    backend
        .matmul_and_row_sums(
            &backend.upload(a).unwrap(),
            a_layout,
            &backend.upload(b).unwrap(),
            b_layout,
            &mut out,
            &mut sums,
            Store::Replace,
        )
        .unwrap();
    (
        backend.download(&out).unwrap(),
        backend.download(&sums).unwrap(),
    )
}

/// a (rows×cols, row-major) stored as is or as its transpose, with the layout that reads it as a.
fn stored(a: &[f32], rows: usize, cols: usize, transposed: bool) -> (Vec<f32>, MatrixLayout) {
    if !transposed {
        return (a.to_vec(), MatrixLayout::row_major(rows, cols));
    }
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    (t, MatrixLayout::row_major(cols, rows).transposed())
}

/// f16 operands and results on every schedule: the vec4 kernel (sizes that are multiples of
/// 4), its scalar fallback (odd sizes) and the workgroup-tiled kernel.
#[test]
fn gpu_matmul_on_f16_storage_matches_the_reference() {
    if common::gpu_with_f16().is_none() {
        return;
    }
    let mut rng = rng("gpu_matmul_f16");
    for schedule in [MatmulSchedule::Registers, MatmulSchedule::WorkgroupTiles] {
        let backend = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
        backend.set_matmul_schedule(schedule);
        for (batch, inputs, outputs) in [(32, 784, 128), (33, 64, 36), (7, 5, 10)] {
            check_linear(&backend, &mut rng, batch, inputs, outputs, Dtype::F16);
        }
    }
}
