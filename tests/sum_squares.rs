//! The sum of squares behind the logged gradient norms, on both backends against float64:
//! lengths around the workgroup's, a slot in the middle of its buffer, and a bad slot refused.

#[macro_use]
mod common;

use common::{assert_close, normal};
use wgnorm::Backend;
use wgnorm::ops::sum_squares::SumSquaresOps;

backend_test!(sums_squares_into_one_slot, |backend, rng| {
    for len in [0, 1, 255, 256, 257, 1000, 100_003] {
        let values = normal(rng, len, 0.3, 2.0);
        let x = backend.upload(&values).unwrap();
        let mut out = backend.filled(5, -1.0).unwrap();
        backend.sum_squares(&x, &mut out, 3).unwrap();
        let want: f64 = values.iter().map(|&v| f64::from(v).powi(2)).sum();
        let out = backend.download(&out).unwrap();
        assert_eq!(
            [out[0], out[1], out[2], out[4]],
            [-1.0; 4],
            "only slot 3 is written"
        );
        assert_close(&format!("{len} values"), &out[3..4], &[want], 1e-6);
    }
    let x = backend.upload(&[1.0, 2.0]).unwrap();
    let mut out = backend.filled(2, 0.0).unwrap();
    let err = backend
        .sum_squares(&x, &mut out, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("slot 2 of a buffer of 2 values"), "{err}");
});
