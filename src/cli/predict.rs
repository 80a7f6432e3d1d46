//! `wgnorm predict`: the class of each of a user's own images under a saved model.
//!
//! PNGs of any size, grey or colour, are turned into what the model saw in training: MNIST's
//! white digit on black (an image whose border is light is inverted), the digit's box scaled
//! so that its longer side is 20 pixels and placed in a 28×28 frame by its centre of mass, as
//! the MNIST images were made. A 28×28 PNG is taken as it is, inverted if its border is light.
//! `.npy` arrays hold pixels already in [0, 1]: 28×28 or 784 values, or N of either.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Device, DeviceArgs};
use wgnorm::data::mnist::{PIXELS, SIDE};
use wgnorm::graph::{Compute, Sequential};
use wgnorm::train::{Passes, Rows};
use wgnorm::{Error, Result};

#[derive(Args)]
pub struct PredictArgs {
    /// A model.safetensors written by `wgnorm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Print one JSON object per image instead of a line of text.
    #[arg(long)]
    json: bool,
    /// The dataset the model was trained on, which names its classes.
    #[arg(long, value_enum, default_value_t = super::DatasetChoice::Mnist)]
    dataset: super::DatasetChoice,
    /// PNG images (any size, grey or colour) and .npy arrays of pixels in [0, 1].
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// The images to classify: each one's name (where it came from), and their 784 pixels in
/// [0, 1] each, one after another.
#[derive(Default)]
struct Images {
    names: Vec<String>,
    pixels: Vec<f32>,
}

/// Classes shown per image.
const TOP: usize = 3;

pub fn run(args: PredictArgs) -> Result<()> {
    args.device.check()?;
    let saved = super::eval::load_mnist_model(&args.checkpoint)?;
    let mut images = Images::default();
    let mut unreadable = 0;
    for path in &args.files {
        if let Err(e) = read_images(path, &mut images) {
            eprintln!("error: {e}");
            unreadable += 1;
        }
    }
    if !images.names.is_empty() {
        let ranked = match args.device.open()? {
            Device::Gpu(gpu) => classify(&gpu, &saved, &images.pixels)?,
            Device::Cpu(cpu) => classify(&cpu, &saved, &images.pixels)?,
        };
        let names = args.dataset.dataset().class_names();
        for (name, top) in images.names.iter().zip(&ranked) {
            let (best, p) = top[0];
            if args.json {
                let top: Vec<_> = top
                    .iter()
                    .map(|&(c, p)| {
                        serde_json::json!({ "class": c, "label": names[c], "probability": p })
                    })
                    .collect();
                let line = serde_json::json!({
                    "file": name,
                    "class": best,
                    "label": names[best],
                    "probability": p,
                    "top": top,
                });
                println!("{line}");
            } else {
                let top: Vec<String> = top
                    .iter()
                    .map(|&(c, p)| format!("{} {p:.3}", names[c]))
                    .collect();
                println!(
                    "{name}: {} (p {p:.3}); top {TOP}: {}",
                    names[best],
                    top.join(", ")
                );
            }
        }
    }
    match unreadable {
        0 => Ok(()),
        n => Err(Error::InvalidArgument(format!(
            "{n} of {} files could not be read (named above)",
            args.files.len()
        ))),
    }
}

/// The `TOP` most probable classes of each image with their softmax probabilities, most
/// probable first, in eval mode. The images run in passes of as many as the device binds at
/// once; each pass's logits are read back and ranked before the next pass runs.
fn classify<B: Compute>(
    backend: &B,
    saved: &wgnorm::checkpoint::ModelCheckpoint,
    pixels: &[f32],
) -> Result<Vec<Vec<(usize, f32)>>> {
    let spec = &saved.spec;
    let mut model = Sequential::upload(backend, spec, &saved.model)?;
    let source = Rows::Host {
        x: pixels,
        labels: None,
    };
    let passes = Passes::inference(backend, spec, source, pixels.len() / PIXELS)?;
    let mut ranked = Vec::with_capacity(passes.rows());
    passes.run(backend, &mut model, |_, pass| {
        let logits = backend.download(pass.logits)?;
        ranked.extend(logits.chunks_exact(spec.classes()).map(top_classes));
        Ok(())
    })?;
    Ok(ranked)
}

/// The `TOP` largest softmax probabilities of one row of logits, with their classes, largest
/// first (a tie to the lower class).
fn top_classes(row: &[f32]) -> Vec<(usize, f32)> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exp.iter().map(|&e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(TOP);
    ranked
}

/// Adds the images in one file to `images`: a PNG is one, a `.npy` array one per 784 values.
fn read_images(path: &Path, images: &mut Images) -> Result<()> {
    let name = path.display().to_string();
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        let array = wgnorm::data::npy::read(path)?;
        let whole = matches!(array.shape.as_slice(), [PIXELS] | [SIDE, SIDE]);
        let many = matches!(array.shape.as_slice(), [_, PIXELS] | [_, SIDE, SIDE]);
        if !(whole || many) || array.data.is_empty() {
            return Err(Error::Shape(format!(
                "{name}: an array of shape {:?}; expected 28×28 or 784 values, or N of either",
                array.shape
            )));
        }
        if let Some(bad) = array.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::InvalidArgument(format!(
                "{name}: holds {bad}; pixels must lie in [0, 1] (MNIST's bytes / 255)"
            )));
        }
        match array.data.len() / PIXELS {
            1 => images.names.push(name),
            count => images
                .names
                .extend((0..count).map(|i| format!("{name}[{i}]"))),
        }
        images.pixels.extend_from_slice(&array.data);
        return Ok(());
    }
    let decoded = image::io::Reader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| Error::InvalidArgument(format!("{name}: not a readable image ({e})")))?;
    images.pixels.extend(mnist_like(&decoded.to_luma8()));
    images.names.push(name);
    Ok(())
}

/// A grey image as MNIST's pixels (see the module's comment).
fn mnist_like(grey: &image::GrayImage) -> Vec<f32> {
    let (width, height) = grey.dimensions();
    let border: Vec<u8> = grey
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x + 1 == width || *y + 1 == height)
        .map(|(_, _, p)| p.0[0])
        .collect();
    let light = border.iter().map(|&v| f64::from(v)).sum::<f64>() > 127.5 * border.len() as f64;
    let ink = image::GrayImage::from_fn(width, height, |x, y| {
        let v = grey.get_pixel(x, y).0[0];
        image::Luma([if light { 255 - v } else { v }])
    });
    if (width, height) == (SIDE as u32, SIDE as u32) {
        return ink.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect();
    }
    let frame = center_in_frame(&ink);
    frame.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect()
}

/// The digit's box scaled to 20 pixels on its longer side, placed in a 28×28 frame so that its
/// centre of mass is the frame's centre.
fn center_in_frame(ink: &image::GrayImage) -> image::GrayImage {
    let threshold = ink.pixels().map(|p| p.0[0]).max().unwrap_or(0) / 4;
    let marked: Vec<(u32, u32)> = ink
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0[0] > threshold)
        .map(|(x, y, _)| (x, y))
        .collect();
    let side = SIDE as u32;
    let Some(&(first_x, first_y)) = marked.first() else {
        return image::GrayImage::new(side, side);
    };
    let (mut x0, mut y0, mut x1, mut y1) = (first_x, first_y, first_x, first_y);
    for &(x, y) in &marked {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let digit = image::imageops::crop_imm(ink, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let longer = digit.width().max(digit.height()) as f32;
    let scale = 20.0 / longer;
    let (w, h) = (
        ((digit.width() as f32 * scale).round() as u32).max(1),
        ((digit.height() as f32 * scale).round() as u32).max(1),
    );
    let small = image::imageops::resize(&digit, w, h, image::imageops::FilterType::Triangle);
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in small.enumerate_pixels() {
        let v = f64::from(p.0[0]);
        (mass, mx, my) = (mass + v, mx + v * f64::from(x), my + v * f64::from(y));
    }
    let (cx, cy) = if mass > 0.0 {
        (mx / mass, my / mass)
    } else {
        (f64::from(w) / 2.0, f64::from(h) / 2.0)
    };
    let half = f64::from(side) / 2.0;
    let left = (half - cx).round().clamp(0.0, f64::from(side - w)) as i64;
    let top = (half - cy).round().clamp(0.0, f64::from(side - h)) as i64;
    let mut frame = image::GrayImage::new(side, side);
    image::imageops::overlay(&mut frame, &small, left, top);
    frame
}
