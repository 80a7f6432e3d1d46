//! The activation kernel with an addend, y = keep·scale·act(x + s) and its dx, and the plain sum
//! y = a + b: the float64 reference's gradients against finite differences, both backends
//! against the reference (with and without ReLU and dropout, at lengths that leave a workgroup
//! partly idle), f16 storage of x and the addend, and the pass without an addend unchanged.

#[macro_use]
mod common;

use common::{assert_close, keeps, normal, rng};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::Dtype;
use wgnorm::backend::Backend;
use wgnorm::gpu::WORKGROUP;
use wgnorm::graph::Compute;
use wgnorm::ops::activation::{Activation, ActivationOps, DropoutMask};
use wgnorm::reference::activation::{add, dropout, relu, relu_backward};

/// Lengths of one value, one workgroup and one value more, and a partial last workgroup.
const LENGTHS: [usize; 3] = [1, WORKGROUP as usize + 1, 3 * WORKGROUP as usize + 77];

/// Identity (the plain sum), ReLU, dropout, and ReLU then dropout, with a fresh mask.
fn activations(rng: &mut StdRng) -> [Activation; 4] {
    let mask = DropoutMask::new(0.3, rng.random(), 5, rng.random());
    [
        Activation::IDENTITY,
        Activation::RELU,
        Activation::dropout(mask),
        Activation {
            relu: true,
            dropout: Some(mask),
        },
    ]
}

/// Dropout's keep mask over `len` elements, and its p (every element kept and p = 0 without).
fn dropout_of(activation: Activation, len: usize) -> (Vec<bool>, f64) {
    match activation.dropout {
        Some(mask) => (keeps(&mask, len), f64::from(mask.p)),
        None => (vec![true; len], 0.0),
    }
}

/// The float64 forward: keep·scale·act(x + s).
fn reference_forward(activation: Activation, x: &[f64], s: &[f64]) -> Vec<f64> {
    let sum = add(x, s);
    let activated = if activation.relu { relu(&sum) } else { sum };
    let (keep, p) = dropout_of(activation, x.len());
    dropout(&activated, &keep, p)
}

/// The float64 dx that reaches both x and s: keep·scale·dy·[x + s > 0 or no ReLU].
fn reference_backward(activation: Activation, x: &[f64], s: &[f64], dy: &[f64]) -> Vec<f64> {
    let (keep, p) = dropout_of(activation, x.len());
    let dropped = dropout(dy, &keep, p);
    if activation.relu {
        relu_backward(&add(x, s), &dropped)
    } else {
        dropped
    }
}

fn f64s(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// ∂f/∂v_i by central differences, for a function piecewise linear in v.
fn finite_difference(f: &dyn Fn(&[f64]) -> f64, v: &[f64], i: usize) -> f64 {
    let h = 1e-6;
    let (mut plus, mut minus) = (v.to_vec(), v.to_vec());
    plus[i] += h;
    minus[i] -= h;
    (f(&plus) - f(&minus)) / (2.0 * h)
}

#[test]
fn sum_gradients_match_finite_differences() {
    let mut rng = rng("sum_gradients_match_finite_differences");
    let len = 40;
    let uniform =
        |rng: &mut StdRng| -> Vec<f64> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (x, r) = (uniform(&mut rng), uniform(&mut rng));
    // Away from ReLU's kink at x + s = 0, where the derivative is defined.
    let s: Vec<f64> = uniform(&mut rng)
        .iter()
        .zip(&x)
        .map(|(&s, &x)| if (x + s).abs() < 0.01 { 0.5 - x } else { s })
        .collect();
    let dot = |y: Vec<f64>| -> f64 { y.iter().zip(&r).map(|(y, r)| y * r).sum() };
    for activation in activations(&mut rng) {
        let dx = reference_backward(activation, &x, &s, &r);
        for (i, &exact) in dx.iter().enumerate() {
            let by_x = finite_difference(&|x| dot(reference_forward(activation, x, &s)), &x, i);
            let by_s = finite_difference(&|s| dot(reference_forward(activation, &x, s)), &s, i);
            for (wrt, numeric) in [("x", by_x), ("s", by_s)] {
                assert!(
                    (numeric - exact).abs() <= 1e-6 * (1.0 + numeric.abs()),
                    "{} d{wrt}[{i}]: analytic {exact} vs finite difference {numeric}",
                    activation.sum_name(),
                );
            }
        }
    }
}

/// Forward and backward with an addend, and `add`, against the reference. x + s is one f32
/// rounding and the scale another, so each value is within 2⁻²³ of the reference.
fn sum_matches_reference<B: Compute>(backend: &B, rng: &mut StdRng) {
    for len in LENGTHS {
        let (x, s, dy) = (
            normal(rng, len, 0.0, 1.0),
            normal(rng, len, 0.0, 1.0),
            normal(rng, len, 0.0, 1.0),
        );
        let (xb, sb, dyb) = (
            backend.upload(&x).unwrap(),
            backend.upload(&s).unwrap(),
            backend.upload(&dy).unwrap(),
        );
        let (x, s, dy) = (f64s(&x), f64s(&s), f64s(&dy));
        let mut out = backend.filled(len, f32::NAN).unwrap();
        for activation in activations(rng) {
            let case = format!("{} of {len}", activation.sum_name());
            backend
                .activation_forward_sum(activation, &xb, &sb, &mut out)
                .unwrap();
            assert_close(
                &case,
                &backend.download(&out).unwrap(),
                &reference_forward(activation, &x, &s),
                2e-7,
            );
            // Without ReLU the pass reads neither x nor the addend.
            let (saved_x, saved_s) = match activation.relu {
                true => (Some(&xb), Some(&sb)),
                false => (None, None),
            };
            backend
                .activation_backward_sum(activation, saved_x, saved_s, &dyb, &mut out)
                .unwrap();
            assert_close(
                &format!("{case} dx"),
                &backend.download(&out).unwrap(),
                &reference_backward(activation, &x, &s, &dy),
                2e-7,
            );
        }
        backend.add(&xb, &sb, &mut out).unwrap();
        assert_close(
            &format!("add of {len}"),
            &backend.download(&out).unwrap(),
            &add(&x, &s),
            1e-7,
        );
    }
}

backend_test!(sum_matches_reference, |backend, rng| {
    sum_matches_reference(backend, rng)
});

/// x = −0 where the pass keeps it: an addend of +0 would turn it into +0, so the bits show
/// whether the pass without an addend adds anything.
fn with_negative_zeros(rng: &mut StdRng, len: usize) -> Vec<f32> {
    let mut x = normal(rng, len, 0.0, 1.0);
    x.iter_mut().step_by(3).for_each(|v| *v = -0.0);
    x
}

/// What the pass without an addend computed before the addend existed, in f32 on the host:
/// keep·scale·act(x) and keep·scale·dy·[x > 0 or no ReLU].
fn plain_forward_and_backward(activation: Activation, x: &[f32], dy: &[f32]) -> [Vec<u32>; 2] {
    let (keep, scale) = match activation.dropout {
        Some(mask) => (keeps(&mask, x.len()), mask.scale()),
        None => (vec![true; x.len()], 1.0),
    };
    let forward = (x.iter().zip(&keep))
        .map(|(&v, &k)| {
            let activated = if activation.relu { v.max(0.0) } else { v };
            if k { activated * scale } else { 0.0 }
        })
        .map(f32::to_bits)
        .collect();
    let backward = (x.iter().zip(dy).zip(&keep))
        .map(|((&v, &d), &k)| {
            let passes = k && (!activation.relu || v > 0.0);
            if passes { d * scale } else { 0.0 }
        })
        .map(f32::to_bits)
        .collect();
    [forward, backward]
}

/// Without an addend, forward and backward are bit for bit what they were: −0 stays −0 where
/// no ReLU turns it into 0, while the same x summed with zeros turns it into +0.
fn no_addend_path_is_unchanged<B: Compute>(backend: &B, rng: &mut StdRng) {
    let len = LENGTHS[2];
    let x = with_negative_zeros(rng, len);
    let dy = normal(rng, len, 0.0, 1.0);
    let (xb, dyb) = (backend.upload(&x).unwrap(), backend.upload(&dy).unwrap());
    let bits = |buffer: &B::Buffer| -> Vec<u32> {
        let values = backend.download(buffer).unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    };
    let mut out = backend.filled(len, f32::NAN).unwrap();
    for activation in activations(rng) {
        let [forward, backward] = plain_forward_and_backward(activation, &x, &dy);
        backend
            .activation_forward(activation, &xb, &mut out)
            .unwrap();
        // ReLU's max(−0, 0) may give either zero, on either backend; the others keep −0's bits.
        let zeros_as_one = |bits: Vec<u32>| -> Vec<u32> {
            let negative_zero = (-0.0f32).to_bits();
            (bits.into_iter())
                .map(|b| {
                    if activation.relu && b == negative_zero {
                        0
                    } else {
                        b
                    }
                })
                .collect()
        };
        let what = activation.name();
        assert_eq!(zeros_as_one(bits(&out)), zeros_as_one(forward), "{what}");
        let x = Some(&xb).filter(|_| activation.relu);
        backend
            .activation_backward(activation, x, &dyb, &mut out)
            .unwrap();
        assert_eq!(bits(&out), backward, "{what} backward");
    }
    let zeros = backend.filled(len, 0.0).unwrap();
    backend.add(&xb, &zeros, &mut out).unwrap();
    let summed = backend.download(&out).unwrap();
    assert!(
        (x.iter().zip(&summed)).all(|(x, y)| *x != 0.0 || y.to_bits() == 0),
        "−0 + 0 is +0"
    );
}

backend_test!(no_addend_path_is_unchanged, |backend, rng| {
    no_addend_path_is_unchanged(backend, rng)
});

/// x and the addend each stored as f32 or f16, y as f32 or f16: the values are widened to f32,
/// so against the reference on the f16-rounded inputs y is one f32 rounding off with an f32
/// output (and only one f16 rounding, ≤ 2⁻¹¹ ≈ 4.9e-4 relative, with an f16 output), and dx
/// likewise. That the inputs really were stored as f16 shows against the unrounded inputs.
#[test]
fn gpu_f16_storage_of_x_and_the_addend() {
    let Some(gpu) = common::gpu_with_f16() else {
        return;
    };
    let mut rng = rng("gpu_f16_storage_of_x_and_the_addend");
    let len = LENGTHS[2];
    let round = |v: &[f32], dtype: Dtype| -> Vec<f64> {
        match dtype {
            Dtype::F32 => f64s(v),
            Dtype::F16 => v.iter().map(|&v| half::f16::from_f32(v).to_f64()).collect(),
        }
    };
    let tolerance = |dtype: Dtype| match dtype {
        Dtype::F32 => 2e-7,
        Dtype::F16 => 2e-3,
    };
    let (x, s, dy) = (
        normal(&mut rng, len, 0.0, 1.0),
        normal(&mut rng, len, 0.0, 1.0),
        normal(&mut rng, len, 0.0, 1.0),
    );
    let dyb = gpu.upload(&dy).unwrap();
    use Dtype::{F16, F32};
    for (x_dtype, s_dtype, out_dtype) in [(F16, F16, F32), (F16, F32, F16), (F32, F16, F32)] {
        let case = format!("x {x_dtype:?}, addend {s_dtype:?}, out {out_dtype:?}");
        let (xb, sb) = (
            gpu.upload_as(&x, x_dtype).unwrap(),
            gpu.upload_as(&s, s_dtype).unwrap(),
        );
        let (x16, s16) = (round(&x, x_dtype), round(&s, s_dtype));
        let mut out = gpu.scratch_as(len, out_dtype).unwrap();
        for activation in activations(&mut rng) {
            let what = format!("{case}, {}", activation.sum_name());
            gpu.activation_forward_sum(activation, &xb, &sb, &mut out)
                .unwrap();
            let y = gpu.download(&out).unwrap();
            assert_close(
                &what,
                &y,
                &reference_forward(activation, &x16, &s16),
                tolerance(out_dtype),
            );
            if out_dtype == F32 {
                let unrounded = reference_forward(activation, &f64s(&x), &f64s(&s));
                let error = common::normwise_error(&y, &unrounded);
                assert!(error > 1e-5, "{what}: not stored as f16 ({error:.2e})");
            }
            gpu.activation_backward_sum(activation, Some(&xb), Some(&sb), &dyb, &mut out)
                .unwrap();
            assert_close(
                &format!("{what} dx"),
                &gpu.download(&out).unwrap(),
                &reference_backward(activation, &x16, &s16, &f64s(&dy)),
                tolerance(out_dtype),
            );
        }
    }
}
