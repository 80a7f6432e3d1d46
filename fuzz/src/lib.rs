//! What the fuzz targets and the seed writer share.

use wgnorm::graph::ModelSpec;
use wgnorm::ops::batchnorm::BatchNormConfig;

/// A model small enough that its files make quick seeds: 4 → 3 (BatchNorm) → 2.
pub fn tiny_spec(batchnorm: bool) -> ModelSpec {
    ModelSpec {
        inputs: 4,
        hidden: vec![3],
        classes: 2,
        batchnorm,
        dropout: 0.2,
        batchnorm_config: BatchNormConfig::default(),
    }
}
