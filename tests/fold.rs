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
    BatchNorm, Compute, HostModel, Image, Init, LayerSpec, Linear, ModelSpec, Relu, Sequential,
    StepKey, fold_batchnorm,
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
        cnn(
            "conv4k3p1,bn,relu,res(conv4k3p1,bn,relu,conv4k3p1,bn),res6s2(conv6k3s2p1,bn),avgpool,flatten,fc10",
        ),
    ]
}

/// A model whose BatchNorms have trained-looking γ, β and running statistics.
fn trained_looking(spec: &ModelSpec, rng: &mut StdRng) -> HostModel {
    let mut model = HostModel::initial(spec, Init::Torch, rng.random());
    for layer in spec.batchnorm_nodes() {
        let features = layer.features;
        let mut set = |tensor: &str, values: Vec<f32>| {
            *model
                .tensor_mut(&format!("{}.{tensor}", layer.name))
                .unwrap() = values;
        };
        set("weight", normal(rng, features, 1.0, 0.3));
        set("bias", normal(rng, features, 1.0, 0.3));
        set(
            "running_mean",
            (0..features).map(|_| rng.random_range(-1.0..1.0)).collect(),
        );
        set(
            "running_var",
            (0..features).map(|_| rng.random_range(0.05..3.0)).collect(),
        );
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
    let key = StepKey::new(0, 0);
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
        assert!(folded_spec.running().is_empty());
        assert_eq!(
            folded_spec.nodes().len(),
            spec.nodes().len() - spec.batchnorm_nodes().len()
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
            Linear { outputs: 8 }.into(),
            LayerSpec::Relu(Relu),
            LayerSpec::BatchNorm(BatchNorm),
            Linear { outputs: 10 }.into(),
        ],
        BatchNormConfig::default(),
    )
    .unwrap();
    let model = HostModel::initial(&spec, Init::Keras, 1);
    let err = fold_batchnorm(&spec, &model).unwrap_err().to_string();
    assert!(err.contains("layer 2 (BatchNorm) does not follow"), "{err}");
}

#[test]
fn a_batchnorm_first_in_a_residual_body_is_refused() {
    let image = Image {
        channels: 2,
        height: 4,
        width: 4,
    };
    let arch = "conv2k3p1,res(bn,relu,conv2k3p1),flatten,fc10";
    let spec = ModelSpec::from_arch(arch, image, BatchNormConfig::default()).unwrap();
    let model = HostModel::initial(&spec, Init::Keras, 1);
    let err = fold_batchnorm(&spec, &model).unwrap_err().to_string();
    assert!(
        err.contains("layer 1.body.0 (BatchNorm) does not follow"),
        "{err}"
    );
}
