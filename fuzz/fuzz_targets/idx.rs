//! The MNIST IDX parsers, and the gunzip in front of them: any bytes give parsed data that
//! keeps the parsers' promises, or an error.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgnorm::data::mnist::{self, CLASSES, PIXELS};

fn parse(bytes: &[u8]) {
    let path = Path::new("fuzz-input");
    if let Ok(images) = mnist::parse_images(path, bytes) {
        assert_eq!(images.len() % PIXELS, 0, "a partial image was accepted");
    }
    if let Ok(labels) = mnist::parse_labels(path, bytes) {
        assert!(labels.iter().all(|&l| (l as usize) < CLASSES));
    }
}

fuzz_target!(|bytes: &[u8]| {
    parse(bytes);
    if let Ok(raw) = mnist::gunzip(Path::new("fuzz-input.gz"), bytes) {
        parse(&raw);
    }
});
