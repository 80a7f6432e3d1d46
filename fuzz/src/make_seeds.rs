//! Writes the seed corpora in `seeds/`: small valid files of each format, written by wgnorm
//! itself (and npyz for the dtypes wgnorm does not write), for the fuzzers to mutate.

use std::path::Path;

use wgnorm::Dtype;
use wgnorm::checkpoint::{self, TrainingState};
use wgnorm::data::npy;
use wgnorm::graph::{HostModel, Init};
use wgnorm::optim::OptimizerConfig;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

fn idx(dir: &Path) -> std::io::Result<()> {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend((0..2 * 784).map(|i| (i % 256) as u8));
    let labels = [0, 0, 8, 1, 0, 0, 0, 2, 3, 7];
    std::fs::write(dir.join("images"), &images)?;
    std::fs::write(dir.join("labels"), labels)?;
    std::fs::write(dir.join("images.gz"), gzip(&images))?;
    std::fs::write(dir.join("labels.gz"), gzip(&labels))
}

fn npy_seeds(dir: &Path) -> wgnorm::Result<()> {
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    npy::write(&dir.join("f32.npy"), &[2, 3], &values)?;
    let io = |e: std::io::Error| wgnorm::Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    npyz::to_file_1d(dir.join("f64.npy"), values.iter().map(|&v| f64::from(v))).map_err(io)?;
    npyz::to_file_1d(
        dir.join("f16.npy"),
        values.iter().map(|&v| half::f16::from_f32(v)),
    )
    .map_err(io)?;
    npyz::to_file_1d(dir.join("i32.npy"), [1i32, 2, 3]).map_err(io)
}

fn checkpoints(dir: &Path) -> wgnorm::Result<()> {
    for (batchnorm, dtype, name) in [
        (true, Dtype::F32, "bn.safetensors"),
        (false, Dtype::F16, "nobn.f16.safetensors"),
    ] {
        let spec = wgnorm_fuzz::tiny_spec(batchnorm);
        let model = HostModel::initial(&spec, Init::Keras, 0);
        checkpoint::save_model(&dir.join(name), &spec, &model, 1, dtype)?;
    }
    let spec = wgnorm_fuzz::tiny_spec(true);
    let adam = OptimizerConfig::adam(1e-3);
    let optimizer = (spec.params().iter())
        .map(|param| {
            let elements: usize = param.shape.iter().product();
            vec![vec![0.25; elements]; adam.state_names().len()]
        })
        .collect();
    let state = TrainingState {
        epochs_done: 1,
        optimizer_steps: 10,
        settings: "{}".to_string(),
        history: "[]".to_string(),
        optimizer,
    };
    checkpoint::save_state(
        &dir.join("state.safetensors"),
        &spec,
        adam.state_names(),
        &state,
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for target in ["idx", "npy", "checkpoint"] {
        std::fs::create_dir_all(seeds.join(target))?;
    }
    idx(&seeds.join("idx"))?;
    npy_seeds(&seeds.join("npy"))?;
    checkpoints(&seeds.join("checkpoint"))?;
    println!("seeds written to {}", seeds.display());
    Ok(())
}
