//! The whole graph's forward and backward (`Sequential`) against the float64 layer references
//! chained layer by layer, for MLPs and convolutional stacks, on both backends.

#[macro_use]
mod common;

use common::{
    assert_close, assert_close_to_terms, f64s, keeps, linear_backward, linear_forward, norm, normal,
};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::Backend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::graph::{
    Compute, HostModel, Image, Init, LayerSpec, ModelSpec, SampleShape, Sequential, StepKey,
};
use wgnorm::ops::activation::DropoutMask;
use wgnorm::ops::batchnorm::{BatchNormConfig, BatchNormShape, Mode};
use wgnorm::ops::loss::metric;
use wgnorm::ops::spatial::ImageShape;
use wgnorm::reference;
use wgnorm::reference::spatial;

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// The images of a layer's input, for `rows` samples.
fn images(shape: SampleShape, rows: usize) -> ImageShape {
    match shape {
        SampleShape::Image(image) => image.batch(rows),
        SampleShape::Flat(_) => panic!("the spec gives a spatial layer flat input"),
    }
}

/// BatchNorm's view of its input in training: channels-last images are (rows·positions,
/// channels), in the ghost batches of the spec's virtual batch, if any.
fn batchnorm_shape(spec: &ModelSpec, shape: SampleShape, rows: usize) -> BatchNormShape {
    let (n, c) = match shape {
        SampleShape::Flat(features) => (rows, features),
        SampleShape::Image(image) => (rows * image.positions(), image.channels),
    };
    let ghost_batches = spec.batchnorm_config().ghost_batches(rows).unwrap();
    BatchNormShape::new(n, c, 1).with_ghost_batches(ghost_batches)
}

/// The reference's view of a LayerNorm, GroupNorm or InstanceNorm layer's input.
fn groups_of(layer: &LayerSpec, shape: SampleShape, rows: usize) -> reference::groupnorm::Groups {
    let norm = layer.groupnorm_shape(rows, shape).unwrap();
    reference::groupnorm::Groups {
        samples: rows,
        channels: norm.channels,
        groups: norm.groups,
    }
}

/// The gradient of `spatial::flatten`: each value back to its channels-last place.
fn unflatten(dy: &[f64], shape: ImageShape) -> Vec<f64> {
    let (positions, channels) = (shape.positions(), shape.channels);
    let mut dx = vec![0.0; dy.len()];
    for (i, &g) in dy.iter().enumerate() {
        let (n, rest) = (i / (positions * channels), i % (positions * channels));
        let (c, s) = (rest / positions, rest % positions);
        dx[(n * positions + s) * channels + c] = g;
    }
    dx
}

/// The size of the sums a normalization's dγ and dβ are, which can cancel: ‖Σ|dy·x̂|‖ and
/// ‖Σ|dy|‖ per channel, over values stored channels-last.
fn affine_terms(dy: &[f64], xhat: &[f64], channels: usize) -> (f64, f64) {
    let mut terms = [vec![0.0; channels], vec![0.0; channels]];
    for (i, (&d, &h)) in dy.iter().zip(xhat).enumerate() {
        terms[0][i % channels] += (d * h).abs();
        terms[1][i % channels] += d.abs();
    }
    (norm(&terms[0]), norm(&terms[1]))
}

/// One training step, chained from the float64 layer formulas: logits, and per parameter (in
/// `ModelSpec::params` order) its gradient and the size of the terms summed into it. A bias
/// feeding BatchNorm has a gradient of exactly 0 (BatchNorm removes any shift), which f32 can
/// only meet to within the size of the dy values it sums.
fn reference_step(
    spec: &ModelSpec,
    host: &HostModel,
    x: &[f32],
    labels: &[usize],
    key: StepKey,
) -> StepReference {
    let rows = labels.len();
    let params: Vec<Vec<f64>> = host.params.iter().map(|p| f64s(p)).collect();
    let (layers, shapes) = (spec.layers(), spec.shapes());
    let dropout = |index: usize, p: f32, h: &[f64]| {
        let keep = keeps(
            &DropoutMask::new(p, key.seed, index as u32, key.step),
            h.len(),
        );
        reference::activation::dropout(h, &keep, f64::from(p))
    };
    let mut inputs = Vec::new();
    let mut h = f64s(x);
    let mut next = 0;
    let mut param_at = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let shape = shapes[index];
        inputs.push(h.clone());
        param_at.push(next);
        h = match *layer {
            LayerSpec::Linear { .. } => {
                next += 2;
                let (w, b) = (&params[next - 2], &params[next - 1]);
                linear_forward(&h, w, b, rows, shape.len())
            }
            LayerSpec::Conv2d { window, .. } => {
                next += 2;
                let (w, b) = (&params[next - 2], &params[next - 1]);
                spatial::conv2d(&h, images(shape, rows), w, b, window)
            }
            LayerSpec::BatchNorm => {
                next += 2;
                let bn = batchnorm_shape(spec, shape, rows);
                let (zeros, ones) = (vec![0.0f64; bn.c], vec![1.0f64; bn.c]);
                let (gamma, beta) = (&params[next - 2], &params[next - 1]);
                reference::batchnorm::forward_train(
                    &h, bn, gamma, beta, &zeros, &ones, EPS, MOMENTUM,
                )
                .y
            }
            LayerSpec::LayerNorm | LayerSpec::GroupNorm { .. } | LayerSpec::InstanceNorm => {
                next += 2;
                let (gamma, beta) = (&params[next - 2], &params[next - 1]);
                let groups = groups_of(layer, shape, rows);
                reference::groupnorm::forward(&h, groups, gamma, beta, EPS).y
            }
            LayerSpec::Relu => reference::activation::relu(&h),
            LayerSpec::Dropout { p } => dropout(index, p, &h),
            LayerSpec::MaxPool2d { window } => spatial::max_pool(&h, images(shape, rows), window),
            LayerSpec::AvgPool => spatial::avg_pool(&h, images(shape, rows)),
            LayerSpec::Flatten => spatial::flatten(&h, images(shape, rows)),
        };
    }
    let logits = h;
    let (_, mut dy, _) = reference::loss::softmax_cross_entropy(&logits, labels, spec.classes());
    let mut grads = vec![(Vec::new(), 0.0); params.len()];
    let mut input_grads = vec![Vec::new(); layers.len()];
    for (index, layer) in layers.iter().enumerate().rev() {
        let (input, shape, at) = (&inputs[index], shapes[index], param_at[index]);
        dy = match *layer {
            LayerSpec::Linear { outputs } => {
                let (dx, dw, db) =
                    linear_backward(input, &params[at], &dy, rows, shape.len(), outputs);
                grads[at] = (dw, 0.0);
                grads[at + 1] = (db, norm(&dy));
                dx
            }
            LayerSpec::Conv2d { outputs, window } => {
                let images = images(shape, rows);
                let (dx, dw, db) =
                    spatial::conv2d_backward(input, images, &params[at], outputs, window, &dy);
                grads[at] = (dw, 0.0);
                grads[at + 1] = (db, norm(&dy));
                dx
            }
            LayerSpec::BatchNorm => {
                let bn = batchnorm_shape(spec, shape, rows);
                let g = reference::batchnorm::backward(input, &dy, bn, &params[at], EPS);
                // dγ and dβ are sums that can cancel: measured against Σ|dy·x̂| and Σ|dy|.
                let (ones, zeros) = (vec![1.0; bn.c], vec![0.0; bn.c]);
                let xhat = reference::batchnorm::forward_train(
                    input, bn, &ones, &zeros, &zeros, &ones, EPS, MOMENTUM,
                )
                .y;
                let (dgamma_terms, dbeta_terms) = affine_terms(&dy, &xhat, bn.c);
                grads[at] = (g.dgamma, dgamma_terms);
                grads[at + 1] = (g.dbeta, dbeta_terms);
                g.dx
            }
            LayerSpec::LayerNorm | LayerSpec::GroupNorm { .. } | LayerSpec::InstanceNorm => {
                let groups = groups_of(layer, shape, rows);
                let g = reference::groupnorm::backward(input, &dy, groups, &params[at], EPS);
                // dγ and dβ are sums that can cancel: measured against Σ|dy·x̂| and Σ|dy|.
                let (unit_gamma, zero_beta) =
                    (vec![1.0; groups.channels], vec![0.0; groups.channels]);
                let xhat =
                    reference::groupnorm::forward(input, groups, &unit_gamma, &zero_beta, EPS).y;
                let (dgamma_terms, dbeta_terms) = affine_terms(&dy, &xhat, groups.channels);
                grads[at] = (g.dgamma, dgamma_terms);
                grads[at + 1] = (g.dbeta, dbeta_terms);
                g.dx
            }
            LayerSpec::Relu => reference::activation::relu_backward(input, &dy),
            LayerSpec::Dropout { p } => dropout(index, p, &dy),
            LayerSpec::MaxPool2d { window } => {
                spatial::max_pool_backward(input, images(shape, rows), window, &dy)
            }
            LayerSpec::AvgPool => spatial::avg_pool_backward(&dy, images(shape, rows)),
            LayerSpec::Flatten => unflatten(&dy, images(shape, rows)),
        };
        input_grads[index] = dy.clone();
    }
    StepReference {
        logits,
        grads,
        input_grads,
    }
}

/// What `reference_step` computes.
struct StepReference {
    logits: Vec<f64>,
    /// Per parameter, its gradient and the size of the terms summed into it.
    grads: Vec<(Vec<f64>, f64)>,
    /// Per layer, the gradient reaching its input.
    input_grads: Vec<Vec<f64>>,
}

/// The stacks checked: MLPs with and without BatchNorm, a two-hidden-layer MLP, two
/// convolutional nets that between them use every layer (BatchNorm2d, strided and padded
/// convolutions, max and average pooling, dropout on images, a transposing flatten, BatchNorm1d),
/// and LayerNorm, GroupNorm and InstanceNorm on features and on images.
fn specs() -> Vec<ModelSpec> {
    let mlp = |hidden: &[usize], batchnorm| ModelSpec::mlp(20, hidden, 5, batchnorm, 0.3).unwrap();
    let cnn = |image, arch| ModelSpec::from_arch(arch, image, BatchNormConfig::default()).unwrap();
    let image = |channels, height, width| Image {
        channels,
        height,
        width,
    };
    vec![
        mlp(&[16], true),
        mlp(&[16], false),
        mlp(&[12, 9], true),
        cnn(
            image(1, 6, 6),
            "conv4k3p1,bn,relu,maxpool2,conv3k3s2p1,relu,avgpool,flatten,fc5",
        ),
        cnn(
            image(2, 5, 5),
            "conv3k3,bn,relu,dropout0.3,flatten,fc4,bn,relu,fc3",
        ),
        cnn(
            image(1, 6, 6),
            "conv4k3p1,gn2,relu,conv6k3,in,relu,flatten,fc8,ln,relu,dropout0.3,fc3",
        ),
        // Groups of three features: two values normalize to ±1 whatever they are, so the
        // gradient through a group of two is eps's tiny share and cancellation alone.
        cnn(
            image(2, 4, 4),
            "conv4k3p1,ln,relu,maxpool2,flatten,fc6,gn2,relu,fc3",
        ),
    ]
}

// LayerNorm, GroupNorm and InstanceNorm normalize each sample by its own statistics, so a
// forward in evaluation mode computes what one in training mode does, bit for bit.
backend_test!(
    groupnorm_layers_compute_the_same_in_train_and_eval_mode,
    |backend, rng| {
        let image = Image {
            channels: 1,
            height: 6,
            width: 6,
        };
        let arch = "conv4k3p1,gn2,relu,conv4k3,in,relu,flatten,fc8,ln,relu,fc3";
        let spec = ModelSpec::from_arch(arch, image, BatchNormConfig::default()).unwrap();
        let host = HostModel::initial(&spec, Init::Torch, rng.random());
        let x = normal(rng, 5 * spec.inputs(), 0.5, 1.0);
        let mut model = Sequential::upload(backend, &spec, &host).unwrap();
        let key = StepKey { seed: 1, step: 2 };
        let logits = [Mode::Train, Mode::Eval].map(|mode| {
            let xb = backend.upload(&x).unwrap();
            let (logits, _) = model.forward(backend, mode, xb, 5, key).unwrap();
            backend.download(&logits).unwrap()
        });
        assert_eq!(logits[0], logits[1], "{arch}: train and eval logits differ");
    }
);

fn graph_backward_matches_chained_references<B: Compute>(
    backend: &B,
    rng: &mut StdRng,
    specs: &[ModelSpec],
    rows: usize,
) {
    for spec in specs {
        let spec = spec.clone();
        let host = HostModel::initial(&spec, Init::Torch, rng.random());
        let x = normal(rng, rows * spec.inputs(), 0.5, 1.0);
        let labels: Vec<usize> = (0..rows)
            .map(|_| rng.random_range(0..spec.classes()))
            .collect();
        let key = StepKey {
            seed: rng.random(),
            step: rng.random_range(0..1000),
        };
        let expected = reference_step(&spec, &host, &x, &labels, key);

        let mut model = Sequential::upload(backend, &spec, &host).unwrap();
        let xb = backend.upload(&x).unwrap();
        let (logits, tape) = model.forward(backend, Mode::Train, xb, rows, key).unwrap();
        let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let mut dlogits = backend.scratch(rows * spec.classes()).unwrap();
        let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
        backend
            .softmax_cross_entropy(
                &logits,
                &backend.upload(&label_values).unwrap(),
                spec.classes(),
                Some(&mut dlogits),
                &mut metrics,
            )
            .unwrap();
        let arch = spec.arch();
        assert_close(
            &format!("{arch} logits"),
            &backend.download(&logits).unwrap(),
            &expected.logits,
            1e-5,
        );
        // The gradient reaching each Linear and convolution input after the first, as shown.
        let mut observed = Vec::new();
        let grads = model
            .backward_observed(backend, tape, dlogits, &mut |index, dx| {
                observed.push((index, backend.download(dx)?));
                Ok(())
            })
            .unwrap();
        let weighted: Vec<usize> = (spec.layers().iter().enumerate())
            .filter(|(index, layer)| {
                *index > 0 && matches!(layer, LayerSpec::Linear { .. } | LayerSpec::Conv2d { .. })
            })
            .map(|(index, _)| index)
            .rev()
            .collect();
        let shown: Vec<usize> = observed.iter().map(|(index, _)| *index).collect();
        assert_eq!(
            shown, weighted,
            "{arch}: the layers whose input gradient is shown"
        );
        for (index, dx) in &observed {
            let what = format!("layer {index} input gradient ({arch})");
            assert_close(&what, dx, &expected.input_grads[*index], 1e-4);
        }
        assert_eq!(grads.len(), expected.grads.len());
        for ((param, grad), (reference, terms)) in
            spec.params().iter().zip(&grads).zip(&expected.grads)
        {
            let what = format!("{} grad ({arch})", param.name);
            let out = backend.download(grad).unwrap();
            assert_close_to_terms(&what, &out, reference, *terms, 1e-4);
        }
    }
}

backend_test!(graph_backward_matches_chained_references, |backend, rng| {
    graph_backward_matches_chained_references(backend, rng, &specs(), 7)
});

// Ghost batches of 3 and 4 samples in a batch of 12, in BatchNorm2d and BatchNorm1d: the layers
// take their statistics per ghost batch, as the chained references do. Not 2: BatchNorm1d over
// two samples normalizes them to ±1 whatever they are, which leaves every gradient upstream of
// it eps's share and cancellation alone.
backend_test!(ghost_batches_match_chained_references, |backend, rng| {
    let image = Image {
        channels: 2,
        height: 5,
        width: 5,
    };
    let specs: Vec<ModelSpec> = [3, 4]
        .map(|samples| {
            let config = BatchNormConfig::default()
                .with_virtual_batch(samples)
                .unwrap();
            let arch = "conv3k3,bn,relu,dropout0.3,flatten,fc4,bn,relu,fc3";
            ModelSpec::from_arch(arch, image, config).unwrap()
        })
        .to_vec();
    graph_backward_matches_chained_references(backend, rng, &specs, 12)
});

/// Convolutions whose patches pass the binding limit go through in chunks of images, their
/// weight gradients added up chunk by chunk: on a backend of its own that plans with a 64 KiB
/// limit, a batch of 100 whose activations fit but whose first convolution's patches (130 kB)
/// do not matches the chained references all the same.
#[test]
fn gpu_convolutions_chunk_patches_beyond_the_binding_limit() {
    if common::gpu().is_none() {
        return;
    }
    let backend = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    let limit = 64 << 10;
    backend.set_max_binding_for_tests(limit);
    let (spec, rows) = (specs()[3].clone(), 100);
    assert!((4 * rows * spec.largest_activation_per_sample()) as u64 <= limit);
    assert!((4 * rows * spec.largest_tensor_per_sample()) as u64 > limit);
    let mut rng = common::rng("gpu_convolutions_chunk_patches_beyond_the_binding_limit");
    graph_backward_matches_chained_references(&backend, &mut rng, &[spec], rows);
}
