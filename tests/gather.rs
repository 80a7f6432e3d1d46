//! The batch gather against a gather on the host, on rows of whole u32 words (one GPU thread per
//! word) and of other lengths (one thread per value), from shuffled indices and offsets.

#[macro_use]
mod common;

use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use wgnorm::Backend;
use wgnorm::ops::data::{DataOps, byte_scale};

fn gathers_like_the_host<B: Backend + DataOps>(backend: &B, rng: &mut StdRng) {
    let scale = byte_scale();
    for row_len in [784, 12, 4, 7, 5, 1] {
        let images = 23;
        let pixels: Vec<u8> = (0..images * row_len).map(|_| rng.random()).collect();
        let labels: Vec<u8> = (0..images).map(|_| rng.random_range(0..10)).collect();
        let device_images = backend.upload_images(&pixels, row_len, &labels).unwrap();
        let mut order: Vec<u32> = (0..images as u32).chain(0..images as u32).collect();
        order.shuffle(rng);
        let index = backend.upload_indices(&order).unwrap();
        for (first, rows) in [(0, 32), (3, 9), (45, 1), (17, 13)] {
            // Poisoned, so a value the gather forgets to write shows.
            let mut x = backend.filled(rows * row_len, f32::NAN).unwrap();
            let mut y = backend.filled(rows, f32::NAN).unwrap();
            backend
                .gather(&device_images, &index, first, &mut x, &mut y)
                .unwrap();
            let rows_taken = &order[first..first + rows];
            let expected_x: Vec<f32> = rows_taken
                .iter()
                .flat_map(|&r| &pixels[r as usize * row_len..][..row_len])
                .map(|&byte| scale[usize::from(byte)])
                .collect();
            let expected_y: Vec<f32> = rows_taken
                .iter()
                .map(|&r| f32::from(labels[r as usize]))
                .collect();
            let case = format!("row_len {row_len}, rows {first}..{}", first + rows);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&backend.download(&x).unwrap()),
                bits(&expected_x),
                "{case}"
            );
            assert_eq!(
                bits(&backend.download(&y).unwrap()),
                bits(&expected_y),
                "{case}"
            );
        }
    }
}

backend_test!(gathers_like_the_host, |backend, rng| gathers_like_the_host(
    backend, rng
));
