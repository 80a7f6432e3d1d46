//! BatchNorm folded into the layer before it computes what the original computes in eval mode,
//! on both backends, for MLPs and convolutional stacks; a BatchNorm with no such layer before it
//! is refused.

#[macro_use]
mod common;

use common::{assert_close, normal};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::Dtype;
use wgnorm::graph::{
    Compute, HostModel, Image, Init, LayerSpec, ModelSpec, Sequential, StepKey, fold_batchnorm,
};
use wgnorm::ops::batchnorm::{BatchNormConfig, Mode};

fn specs() -> Vec<ModelSpec> {
    let image = Image {
        channels: 1,
        height: 8,
        width: 8,
    };
    let cnn = |arch| ModelSpec::from_arch(arch, image, BatchNormConfig::default()).unwrap();
    vec![
        ModelSpec::mlp(64, &[16], 10, true, 0.2).unwrap(),
        ModelSpec::mlp(64, &[12, 9], 10, true, 0.0).unwrap(),
        cnn("conv4k3p1,bn,relu,maxpool2,conv6k3s2p1,bn,relu,flatten,fc7,bn,relu,fc10"),
    ]
}

/// A model whose BatchNorms have trained-looking γ, β and running statistics.
fn trained_looking(spec: &ModelSpec, rng: &mut StdRng) -> HostModel {
    let mut model = HostModel::initial(spec, Init::Torch, rng.random());
    for layer in spec.batchnorm_layers() {
        let names = [
            format!("{}.weight", layer.index),
            format!("{}.bias", layer.index),
        ];
        for (at, param) in spec.params().iter().enumerate() {
            if names.contains(&param.name) {
                model.params[at] = normal(rng, layer.features, 1.0, 0.3);
            }
        }
    }
    for running in &mut model.running {
        for mean in &mut running.mean {
            *mean = rng.random_range(-1.0..1.0);
        }
        for var in &mut running.var {
            *var = rng.random_range(0.05..3.0);
        }
    }
    model
}

fn eval_logits<B: Compute>(
    backend: &B,
    spec: &ModelSpec,
    model: &HostModel,
    x: &[f32],
) -> Vec<f32> {
    let mut sequential =
        Sequential::upload_for_inference(backend, spec, model, Dtype::F32).unwrap();
    let rows = x.len() / spec.inputs();
    let key = StepKey { seed: 0, step: 0 };
    let (logits, _) = sequential
        .forward(backend, Mode::Eval, backend.upload(x).unwrap(), rows, key)
        .unwrap();
    backend.download(&logits).unwrap()
}

fn folding_keeps_eval_outputs<B: Compute>(backend: &B, rng: &mut StdRng) {
    for spec in specs() {
        let model = trained_looking(&spec, rng);
        let (folded_spec, folded) = fold_batchnorm(&spec, &model).unwrap();
        assert!(!folded_spec.has_batchnorm());
        assert!(folded.running.is_empty());
        assert_eq!(
            folded_spec.layers().len(),
            spec.layers().len() - spec.batchnorm_layers().len()
        );
        let x = normal(rng, 40 * spec.inputs(), 0.5, 1.0);
        let original = eval_logits(backend, &spec, &model, &x);
        let reference: Vec<f64> = original.iter().map(|&v| f64::from(v)).collect();
        let after = eval_logits(backend, &folded_spec, &folded, &x);
        assert_close(&format!("folded {}", spec.arch()), &after, &reference, 1e-5);
    }
}

backend_test!(folding_keeps_eval_outputs, |backend, rng| {
    folding_keeps_eval_outputs(backend, rng)
});

#[test]
fn a_batchnorm_after_an_activation_is_refused() {
    let spec = ModelSpec::new(
        wgnorm::graph::SampleShape::Flat(20),
        vec![
            LayerSpec::Linear { outputs: 8 },
            LayerSpec::Relu,
            LayerSpec::BatchNorm,
            LayerSpec::Linear { outputs: 10 },
        ],
        BatchNormConfig::default(),
    )
    .unwrap();
    let model = HostModel::initial(&spec, Init::Keras, 1);
    let err = fold_batchnorm(&spec, &model).unwrap_err().to_string();
    assert!(err.contains("layer 2 (BatchNorm) does not follow"), "{err}");
}
