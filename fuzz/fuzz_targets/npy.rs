//! The `.npy` reader: any bytes give an array whose shape holds exactly its values, or an error.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgnorm::data::npy;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(array) = npy::parse(Path::new("fuzz.npy"), bytes) {
        let elements = (array.shape.iter()).try_fold(1u128, |n, &d| n.checked_mul(d as u128));
        assert_eq!(
            elements,
            Some(array.data.len() as u128),
            "{:?}",
            array.shape
        );
    }
});
