//! Gradient-norm logging (`TrainConfig::log_grad_norms`) names each norm after the tensor it
//! measures: at step 0 of a run, each parameter's logged norm is the L2 norm of the gradient
//! `Sequential::backward` gives that parameter (found by name through `ModelSpec::params`), and
//! each `<node>.input` norm that of the gradient reaching that node's input, for an MLP, a CNN
//! and a residual net on both backends. No input gradient is logged before the first layer
//! with parameters.

#[macro_use]
mod common;

use std::collections::HashMap;

use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::data::mnist::{Mnist, PIXELS, Split};
use wgnorm::graph::{
    Compute, HostModel, Init, LayerSpec, MNIST_IMAGE, ModelSpec, Sequential, Source, StepKey,
};
use wgnorm::ops::batchnorm::{BatchNormConfig, Mode};
use wgnorm::ops::data::DataOps;
use wgnorm::ops::loss::metric;
use wgnorm::train::{GradNormLayout, TrainConfig, Trainer, epoch_order};

/// Rows of the one logged step.
const BATCH: usize = 16;

/// An MLP, a CNN and a residual net (identity and projected blocks) on MNIST's images.
const ARCHS: [&str; 3] = [
    "fc32,bn,relu,dropout0.2,fc16,relu,fc10",
    "conv4k3p1,bn,relu,maxpool2,conv8k3s2p1,relu,dropout0.2,flatten,fc16,relu,fc10",
    "conv4k3s2p1,bn,relu,res(conv4k3p1,bn,relu,conv4k3p1,bn),dropout0.2,\
     res8s2(conv8k3s2p1,bn,relu,conv8k3p1,bn),avgpool,flatten,fc10",
];

/// MNIST-shaped images of random bytes with random labels: what the step computes on does
/// not matter, only that both computations see the same.
fn random_images(rng: &mut StdRng, images: usize) -> Split {
    Split {
        images: (0..images * PIXELS).map(|_| rng.random()).collect(),
        labels: (0..images).map(|_| rng.random_range(0..10)).collect(),
    }
}

/// Euclidean norm, in f64.
fn l2(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Step 0 of a run of `arch` logging every step, against the same step done by hand: the
/// gradient of each parameter from `Sequential::backward_observed`, by name, and the gradient
/// reaching each observed node's input, named `<node>.input`.
fn logged_norms_name_their_gradients<B: Compute + DataOps>(
    backend: &B,
    rng: &mut StdRng,
    arch: &str,
) {
    let spec = ModelSpec::from_arch(arch, MNIST_IMAGE, BatchNormConfig::default()).unwrap();
    let config = TrainConfig {
        spec: spec.clone(),
        init: Init::Torch,
        epochs: 1,
        val_split: 0.0,
        seed: rng.random(),
        train_limit: Some(BATCH),
        log_grad_norms: Some(1),
        ..TrainConfig::reference(false, BATCH)
    };
    let data = Mnist {
        train: random_images(rng, 3 * BATCH),
        test: random_images(rng, BATCH),
        ..Mnist::default()
    };
    let mut trainer = Trainer::new(backend, config.clone(), &data).unwrap();
    let record = trainer.train_epoch(&mut |_, _| Ok(())).unwrap();
    let [logged] = &record.grad_norms[..] else {
        panic!("{arch}: one step logged, got {:?}", record.grad_norms)
    };
    assert_eq!(logged.step, 0);
    let layout = GradNormLayout::of(&spec);
    assert_eq!(logged.norms.len(), layout.width(), "{arch}");

    // The same step by hand: the run's first batch, weights and dropout key.
    let host = HostModel::initial(&spec, config.init, config.seed);
    let mut model = Sequential::upload(backend, &spec, &host).unwrap();
    let images = (backend.upload_images(&data.train.images, PIXELS, &data.train.labels)).unwrap();
    let index = backend
        .upload_indices(&epoch_order(config.seed, 0, BATCH))
        .unwrap();
    let mut x = backend.scratch(BATCH * PIXELS).unwrap();
    let mut labels = backend.scratch(BATCH).unwrap();
    backend
        .gather(&images, &index, 0, &mut x, &mut labels)
        .unwrap();
    let key = StepKey::new(config.seed, 0);
    let (logits, tape) = model.forward(backend, Mode::Train, x, BATCH, key).unwrap();
    let classes = spec.classes();
    let mut dlogits = backend.scratch(BATCH * classes).unwrap();
    let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
    backend
        .softmax_cross_entropy(&logits, &labels, classes, Some(&mut dlogits), &mut metrics)
        .unwrap();
    let mut expected: HashMap<String, f64> = HashMap::new();
    let mut observed = Vec::new();
    let grads = model
        .backward_observed(backend, tape, dlogits, &mut |node, dx| {
            let name = spec.nodes()[node].tensor_name("input");
            expected.insert(name.clone(), l2(&backend.download(dx)?));
            observed.push(name);
            Ok(())
        })
        .unwrap();
    let params = spec.params();
    assert_eq!(grads.len(), params.len());
    for (param, grad) in params.iter().zip(&grads) {
        expected.insert(param.name.clone(), l2(&backend.download(grad).unwrap()));
    }
    // The parameters in `ModelSpec::params` order, then the inputs in node order.
    let mut names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    names.extend(observed.into_iter().rev());
    assert_eq!(layout.names(), &names[..], "{arch}: the logged names");
    assert!(names.iter().any(|n| n.ends_with(".input")), "{arch}");
    for (name, &norm) in layout.names().iter().zip(&logged.norms) {
        let want = expected[name];
        assert!(
            (norm - want).abs() <= 1e-5 * want,
            "{arch}: {name} logged {norm:e}, its gradient's norm is {want:e}"
        );
    }
}

backend_test!(logged_gradient_norms_match_their_names, |backend, rng| {
    for arch in ARCHS {
        logged_norms_name_their_gradients(backend, rng, arch);
    }
});

/// Per node, whether a layer with parameters lies before it: in a node it reads, or before
/// that.
fn after_parameters(spec: &ModelSpec) -> Vec<bool> {
    let params = spec.params();
    let mut depends = Vec::new();
    let mut after = Vec::new();
    for (index, node) in spec.nodes().iter().enumerate() {
        let reads = node.inputs.iter().any(|source| match source {
            Source::Input => false,
            Source::Node(from) => depends[*from],
        });
        after.push(reads);
        depends.push(reads || params.iter().any(|p| p.node == index));
    }
    after
}

/// The backward pass computes no input gradient for a layer with nothing learned before it,
/// so none is logged: not for the first Linear or convolution (a flatten, a pooling, a ReLU or
/// a residual block's branches before it change nothing), but for one after a BatchNorm.
#[test]
fn no_input_gradient_norm_is_logged_before_the_first_layer_with_parameters() {
    for (arch, inputs) in [
        ("fc10", &[][..]),
        ("flatten,fc10", &[]),
        ("maxpool2,flatten,fc10", &[]),
        ("relu,dropout0.2,fc32,relu,fc10", &["4.input"]),
        ("avgpool,flatten,fc10", &[]),
        ("bn,conv4k3s2,flatten,fc10", &["1.input", "3.input"]),
        (
            "res(conv1k3p1,relu,conv1k3p1),maxpool4,flatten,fc10",
            &["0.body.2.input", "3.input"],
        ),
        (
            "res4s2(conv4k3s2p1,relu,conv4k3p1),avgpool,flatten,fc10",
            &["0.body.2.input", "3.input"],
        ),
    ] {
        let spec = ModelSpec::from_arch(arch, MNIST_IMAGE, BatchNormConfig::default()).unwrap();
        let layout = GradNormLayout::of(&spec);
        let logged: Vec<&str> = (layout.names().iter())
            .filter_map(|name| name.ends_with(".input").then_some(name.as_str()))
            .collect();
        assert_eq!(logged, inputs, "{arch}");
        // The same from the graph: the Linear and convolution nodes after a parameter.
        let after = after_parameters(&spec);
        let weighted: Vec<String> = (spec.nodes().iter().enumerate())
            .filter(|(index, node)| {
                matches!(node.layer, LayerSpec::Linear(_) | LayerSpec::Conv2d(_)) && after[*index]
            })
            .map(|(_, node)| node.tensor_name("input"))
            .collect();
        assert_eq!(logged, weighted, "{arch}");
        let params: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
        assert_eq!(layout.names()[..params.len()], params, "{arch}");
        assert_eq!(layout.width(), params.len() + inputs.len(), "{arch}");
    }
}
