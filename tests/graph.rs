//! The whole graph's forward and backward (`Sequential`) against the float64 layer references
//! chained layer by layer, for MLPs and convolutional stacks, on both backends.

#[macro_use]
mod common;

use common::{
    assert_close, assert_close_to_terms, f64s, keeps, linear_backward, linear_forward, norm, normal,
};
use rand::RngExt;
use rand::rngs::StdRng;
use std::collections::HashMap;
use wgnorm::Backend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};

use wgnorm::graph::{
    Compute, GroupNorm, HostModel, Image, Init, LayerSpec, ModelSpec, Node, SampleShape,
    Sequential, Source, StepKey,
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
fn groups_of(layer: GroupNorm, shape: SampleShape, rows: usize) -> reference::groupnorm::Groups {
    let norm = layer.shape(rows, shape);
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

/// x̂ of a normalization's input and the size of the terms summed into dγ and dβ: Σ|dy·x̂| and
/// Σ|dy| per channel (channels-last, `channels` last), the sums that can cancel.
fn affine_terms(dy: &[f64], xhat: &[f64], channels: usize) -> (f64, f64) {
    let mut terms = [vec![0.0; channels], vec![0.0; channels]];
    for (i, (&d, &h)) in dy.iter().zip(xhat).enumerate() {
        terms[0][i % channels] += (d * h).abs();
        terms[1][i % channels] += d.abs();
    }
    (norm(&terms[0]), norm(&terms[1]))
}

/// One training step, chained node by node from the float64 layer formulas: logits, and per
/// parameter (by name) its gradient and the size of the terms summed into it. A bias feeding
/// BatchNorm has a gradient of exactly 0 (BatchNorm removes any shift), which f32 can only meet
/// to within the size of the dy values it sums; so, but for eps's share, has the weight of a
/// 1×1 convolution of one channel feeding a normalization (which removes its scale), met to
/// within the size of the x·dy terms it sums.
fn reference_step(
    spec: &ModelSpec,
    host: &HostModel,
    x: &[f32],
    labels: &[usize],
    key: StepKey,
) -> StepReference {
    let rows = labels.len();
    let nodes = spec.nodes();
    let tensor = |node: &Node, name: &str| f64s(host.tensor(&node.tensor_name(name)).unwrap());
    let dropout = |index: usize, p: f32, h: &[f64]| {
        let keep = keeps(
            &DropoutMask::new(p, key.seed, index as u32, key.step),
            h.len(),
        );
        reference::activation::dropout(h, &keep, f64::from(p))
    };
    let input = f64s(x);
    let mut outputs: Vec<Vec<f64>> = Vec::new();
    // What each node reads: its input, or the sum of its two.
    let mut inputs = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let read = |source: &Source| match source {
            Source::Input => &input,
            Source::Node(from) => &outputs[*from],
        };
        let mut h = read(&node.inputs[0]).clone();
        if let Some(other) = node.inputs.get(1) {
            for (a, b) in h.iter_mut().zip(read(other)) {
                *a += b;
            }
        }
        let shape = node.input;
        let out = match node.layer {
            LayerSpec::Linear(_) => {
                let (w, b) = (tensor(node, "weight"), tensor(node, "bias"));
                linear_forward(&h, &w, &b, rows, shape.len())
            }
            LayerSpec::Conv2d(conv) => {
                let (w, b) = (tensor(node, "weight"), tensor(node, "bias"));
                spatial::conv2d(&h, images(shape, rows), &w, &b, conv.window)
            }
            LayerSpec::BatchNorm(_) => {
                let bn = batchnorm_shape(spec, shape, rows);
                let (zeros, ones) = (vec![0.0f64; bn.c], vec![1.0f64; bn.c]);
                let (gamma, beta) = (tensor(node, "weight"), tensor(node, "bias"));
                reference::batchnorm::forward_train(
                    &h, bn, &gamma, &beta, &zeros, &ones, EPS, MOMENTUM,
                )
                .y
            }
            LayerSpec::GroupNorm(norm) => {
                let (gamma, beta) = (tensor(node, "weight"), tensor(node, "bias"));
                let groups = groups_of(norm, shape, rows);
                reference::groupnorm::forward(&h, groups, &gamma, &beta, EPS).y
            }
            LayerSpec::Relu(_) => reference::activation::relu(&h),
            LayerSpec::Dropout(d) => dropout(index, d.p, &h),
            LayerSpec::MaxPool2d(pool) => spatial::max_pool(&h, images(shape, rows), pool.window),
            LayerSpec::AvgPool(_) => spatial::avg_pool(&h, images(shape, rows)),
            LayerSpec::Flatten(_) => spatial::flatten(&h, images(shape, rows)),
        };
        inputs.push(h);
        outputs.push(out);
    }
    let logits = outputs.last().unwrap().clone();
    let (_, dlogits, _) = reference::loss::softmax_cross_entropy(&logits, labels, spec.classes());
    let mut output_grads: Vec<Option<Vec<f64>>> = vec![None; nodes.len()];
    *output_grads.last_mut().unwrap() = Some(dlogits);
    let mut grads = HashMap::new();
    let mut input_grads = vec![Vec::new(); nodes.len()];
    let abs = |values: &[f64]| -> Vec<f64> { values.iter().map(|v| v.abs()).collect() };
    for (index, node) in nodes.iter().enumerate().rev() {
        let Some(dy) = output_grads[index].take() else {
            continue;
        };
        let (input, shape) = (&inputs[index], node.input);
        let mut grad = |name: &str, values: Vec<f64>, terms: f64| {
            grads.insert(node.tensor_name(name), (values, terms));
        };
        let dx = match node.layer {
            LayerSpec::Linear(linear) => {
                let w = tensor(node, "weight");
                let (dx, dw, db) =
                    linear_backward(input, &w, &dy, rows, shape.len(), linear.outputs);
                let (_, dw_terms, _) = linear_backward(
                    &abs(input),
                    &w,
                    &abs(&dy),
                    rows,
                    shape.len(),
                    linear.outputs,
                );
                grad("weight", dw, norm(&dw_terms));
                grad("bias", db, norm(&dy));
                dx
            }
            LayerSpec::Conv2d(conv) => {
                let images = images(shape, rows);
                let w = tensor(node, "weight");
                let (dx, dw, db) =
                    spatial::conv2d_backward(input, images, &w, conv.outputs, conv.window, &dy);
                let (_, dw_terms, _) = spatial::conv2d_backward(
                    &abs(input),
                    images,
                    &w,
                    conv.outputs,
                    conv.window,
                    &abs(&dy),
                );
                grad("weight", dw, norm(&dw_terms));
                grad("bias", db, norm(&dy));
                dx
            }
            LayerSpec::BatchNorm(_) => {
                let bn = batchnorm_shape(spec, shape, rows);
                let gamma = tensor(node, "weight");
                let g = reference::batchnorm::backward(input, &dy, bn, &gamma, EPS);
                let (zeros, ones) = (vec![0.0f64; bn.c], vec![1.0f64; bn.c]);
                let xhat = reference::batchnorm::forward_train(
                    input, bn, &ones, &zeros, &zeros, &ones, EPS, MOMENTUM,
                )
                .y;
                let (dgamma_terms, dbeta_terms) = affine_terms(&dy, &xhat, bn.c);
                grad("weight", g.dgamma, dgamma_terms);
                grad("bias", g.dbeta, dbeta_terms);
                g.dx
            }
            LayerSpec::GroupNorm(norm) => {
                let groups = groups_of(norm, shape, rows);
                let gamma = tensor(node, "weight");
                let g = reference::groupnorm::backward(input, &dy, groups, &gamma, EPS);
                let (ones, zeros) = (vec![1.0; groups.channels], vec![0.0; groups.channels]);
                let xhat = reference::groupnorm::forward(input, groups, &ones, &zeros, EPS).y;
                let (dgamma_terms, dbeta_terms) = affine_terms(&dy, &xhat, groups.channels);
                grad("weight", g.dgamma, dgamma_terms);
                grad("bias", g.dbeta, dbeta_terms);
                g.dx
            }
            LayerSpec::Relu(_) => reference::activation::relu_backward(input, &dy),
            LayerSpec::Dropout(d) => dropout(index, d.p, &dy),
            LayerSpec::MaxPool2d(pool) => {
                spatial::max_pool_backward(input, images(shape, rows), pool.window, &dy)
            }
            LayerSpec::AvgPool(_) => spatial::avg_pool_backward(&dy, images(shape, rows)),
            LayerSpec::Flatten(_) => unflatten(&dy, images(shape, rows)),
        };
        for source in &node.inputs {
            if let Source::Node(from) = source {
                let sum = output_grads[*from].get_or_insert_with(|| vec![0.0; dx.len()]);
                for (s, d) in sum.iter_mut().zip(&dx) {
                    *s += d;
                }
            }
        }
        input_grads[index] = dx;
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
    /// Per parameter by name, its gradient and the size of the terms summed into it.
    grads: HashMap<String, (Vec<f64>, f64)>,
    /// Per node, the gradient reaching its input.
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
        // Residual blocks: the identity shortcut (its input feeds the body and the join, whose
        // gradients add), a projection with stride 2, and a block without normalization.
        cnn(
            image(2, 6, 6),
            "conv4k3p1,bn,relu,res(conv4k3p1,bn,relu,conv4k3p1,bn),res6s2(conv6k3s2p1,bn,relu,conv6k3p1,bn),res(conv6k3p1),avgpool,flatten,fc3",
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
        let key = StepKey::new(1, 2);
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
        let key = StepKey::new(rng.random(), rng.random_range(0..1000));
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
        let weighted: Vec<usize> = (spec.nodes().iter().enumerate())
            .filter(|(index, node)| {
                node.layer.kind().is_weighted() && spec.computes_input_grad(*index)
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
        for (param, grad) in spec.params().iter().zip(&grads) {
            let (reference, terms) = &expected.grads[&param.name];
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

/// A sample shape while a stack is drawn: an image (channels, height, width), or features.
#[derive(Clone, Copy)]
enum Drawn {
    Image(usize, usize, usize),
    Flat(usize),
}

/// The fusion-plan case a drawn stack is made to contain, beside whatever else it draws.
#[derive(Clone, Copy, Debug)]
enum Forced {
    /// A BatchNorm, a ReLU and a dropout in a row: one pass.
    BatchNormReluDropout,
    /// A ReLU and a dropout without BatchNorm: one pass.
    ReluDropout,
    /// A BatchNorm whose output feeds a residual block (its body's ReLU and the shortcut): not
    /// fused with that ReLU.
    BatchNormFeedsTwo,
    /// A residual join followed by a dropout: the dropout runs in the join's pass.
    JoinDropout,
    /// A plain MLP on the image's values.
    Mlp,
}

/// Draws stacks of layers and residual blocks that `ModelSpec` should accept, with every
/// normalization group holding at least 4 values (groups of one or two values normalize
/// degenerately: see `specs`).
struct StackDraw<'r> {
    rng: &'r mut StdRng,
    tokens: Vec<String>,
    shape: Drawn,
}

impl StackDraw<'_> {
    fn push(&mut self, token: impl Into<String>) {
        self.tokens.push(token.into());
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A normalization valid on the current shape: bn always, ln, in and gn<G> where their
    /// groups hold at least 4 values.
    fn norm(&mut self) -> String {
        let mut options = vec!["bn".to_string()];
        let (channels, positions, image) = match self.shape {
            Drawn::Image(c, h, w) => (c, h * w, true),
            Drawn::Flat(n) => (n, 1, false),
        };
        if channels * positions >= 4 {
            options.push("ln".to_string());
        }
        if image && positions >= 4 {
            options.push("in".to_string());
        }
        for groups in 2..=channels {
            if channels % groups == 0 && channels / groups * positions >= 4 {
                options.push(format!("gn{groups}"));
            }
        }
        options.swap_remove(self.rng.random_range(0..options.len()))
    }

    /// What may follow a layer with parameters: a normalization, a ReLU, a dropout, each maybe.
    fn activation(&mut self) {
        if self.chance(0.6) {
            let norm = self.norm();
            self.push(norm);
        }
        if self.chance(0.75) {
            self.push("relu");
        }
        if self.chance(0.35) {
            self.push("dropout0.3");
        }
    }

    /// A convolution to `channels` channels, stride `stride`, whose output keeps the
    /// height·width of `(h - 1) / stride + 1` when `same` (3×3 padded by 1, or 1×1 at stride 1).
    fn conv(&mut self, channels: usize, stride: usize, same: bool) {
        let Drawn::Image(_, h, w) = self.shape else {
            unreachable!("a convolution on features")
        };
        let (kernel, padding) = match same {
            true if stride == 1 && self.chance(0.3) => (1, 0),
            true => (3, 1),
            false => {
                let kernel = self.rng.random_range(1..=3.min(h).min(w));
                (kernel, self.rng.random_range(0..=kernel / 2))
            }
        };
        let out = |side: usize| (side + 2 * padding - kernel) / stride + 1;
        self.shape = Drawn::Image(channels, out(h), out(w));
        match stride {
            1 => self.push(format!("conv{channels}k{kernel}p{padding}")),
            _ => self.push(format!("conv{channels}k{kernel}s{stride}p{padding}")),
        }
    }

    /// A residual block of `kind` (drawn where `None`): 0 the identity, 1 a projection
    /// (`res<C>[s<S>]`), 2 another shortcut (`res(<body>|<shortcut>)`); its body of one or two
    /// convolutions with normalizations, ReLUs and dropouts between, maybe opened by `first`.
    fn residual(&mut self, kind: Option<usize>, first: Option<&str>) {
        let Drawn::Image(c, h, w) = self.shape else {
            unreachable!("a residual block on features")
        };
        let kind = kind.unwrap_or_else(|| self.rng.random_range(0..3));
        let (channels, stride) = match kind {
            0 => (c, 1),
            _ => (
                self.rng.random_range(2..=4),
                if h.min(w) >= 4 && self.chance(0.5) {
                    2
                } else {
                    1
                },
            ),
        };
        let outer = std::mem::take(&mut self.tokens);
        if let Some(first) = first {
            self.push(first);
        }
        self.conv(channels, stride, true);
        self.activation();
        if self.chance(0.6) {
            self.conv(channels, 1, true);
            if self.chance(0.7) {
                let norm = self.norm();
                self.push(norm);
            }
            if self.chance(0.2) {
                self.push("dropout0.3");
            }
        }
        let body = std::mem::replace(&mut self.tokens, outer).join(",");
        let block = match (kind, stride) {
            (0, _) => format!("res({body})"),
            (1, 1) => format!("res{channels}({body})"),
            (1, _) => format!("res{channels}s{stride}({body})"),
            _ => {
                let shortcut = match self.rng.random_range(0..3) {
                    0 if (channels, stride) == (c, 1) => "bn".to_string(),
                    0 | 1 => format!("conv{channels}k1s{stride}"),
                    _ => format!("conv{channels}k1s{stride},{}", self.norm()),
                };
                format!("res({body}|{shortcut})")
            }
        };
        self.push(block);
        if self.chance(0.3) {
            self.push("dropout0.3");
        }
    }

    /// The `--arch` of one stack on `image`, containing `forced` (with a residual block of
    /// `kind` where it has one).
    fn arch(rng: &mut StdRng, image: Image, forced: Forced, kind: usize) -> String {
        let mut draw = StackDraw {
            rng,
            tokens: Vec::new(),
            shape: Drawn::Image(image.channels, image.height, image.width),
        };
        if let Forced::Mlp = forced {
            draw.shape = Drawn::Flat(image.values());
        } else {
            if draw.chance(0.15) {
                draw.push("bn");
            }
            let channels = draw.rng.random_range(2..=4);
            let same = draw.chance(0.5);
            draw.conv(channels, 1, same);
            match forced {
                Forced::BatchNormReluDropout => {
                    draw.push("bn");
                    draw.push("relu");
                    draw.push("dropout0.3");
                }
                Forced::ReluDropout => {
                    draw.push("relu");
                    draw.push("dropout0.3");
                }
                Forced::BatchNormFeedsTwo => {
                    draw.push("bn");
                    draw.residual(Some(kind), Some("relu"));
                }
                Forced::JoinDropout => {
                    draw.activation();
                    draw.residual(Some(kind), None);
                    if draw.tokens.last().map(String::as_str) != Some("dropout0.3") {
                        draw.push("dropout0.3");
                    }
                }
                Forced::Mlp => unreachable!(),
            }
            for _ in 0..draw.rng.random_range(0..=2) {
                match draw.rng.random_range(0..3) {
                    0 => {
                        let channels = draw.rng.random_range(2..=4);
                        draw.conv(channels, 1, false);
                        draw.activation();
                    }
                    _ => {
                        let first = match draw.rng.random_range(0..4) {
                            0 => Some("relu"),
                            1 => Some("dropout0.3"),
                            _ => None,
                        };
                        draw.residual(None, first);
                    }
                }
                let Drawn::Image(c, h, w) = draw.shape else {
                    unreachable!()
                };
                if h.min(w) >= 4 && draw.chance(0.25) {
                    draw.push("maxpool2");
                    draw.shape = Drawn::Image(c, h / 2, w / 2);
                }
            }
            // The mean over the image of what InstanceNorm (or GroupNorm with a channel per
            // group) gives is its β whatever the input: no gradient flows through it.
            let Drawn::Image(c, ..) = draw.shape else {
                unreachable!()
            };
            let last = draw.tokens.last().map(String::as_str);
            let per_channel = last == Some("in") || last == Some(&format!("gn{c}"));
            if !per_channel && draw.chance(0.4) {
                draw.push("avgpool");
                let Drawn::Image(c, ..) = draw.shape else {
                    unreachable!()
                };
                draw.shape = Drawn::Image(c, 1, 1);
                if draw.chance(0.3) {
                    draw.push("bn");
                }
            }
            let Drawn::Image(c, h, w) = draw.shape else {
                unreachable!()
            };
            draw.push("flatten");
            draw.shape = Drawn::Flat(c * h * w);
        }
        for _ in 0..draw
            .rng
            .random_range(usize::from(matches!(forced, Forced::Mlp))..=2)
        {
            let features = draw.rng.random_range(3..=8);
            draw.push(format!("fc{features}"));
            draw.shape = Drawn::Flat(features);
            draw.activation();
        }
        let classes = draw.rng.random_range(2..=5);
        draw.push(format!("fc{classes}"));
        draw.tokens.join(",")
    }
}

/// What of the fusion plan's cases a spec's graph holds, read from its nodes: a BatchNorm →
/// ReLU → dropout chain, a ReLU → dropout chain without BatchNorm, a BatchNorm feeding a ReLU
/// and another layer, a residual join feeding a dropout alone, an identity and a projected
/// residual block.
fn fusion_cases(spec: &ModelSpec) -> [bool; 6] {
    let nodes = spec.nodes();
    let mut readers = vec![Vec::new(); nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        for source in &node.inputs {
            if let Source::Node(from) = source {
                readers[*from].push(index);
            }
        }
    }
    let is = |index: usize, kind: fn(&LayerSpec) -> bool| kind(&nodes[index].layer);
    let relu = |l: &LayerSpec| matches!(l, LayerSpec::Relu(_));
    let dropout = |l: &LayerSpec| matches!(l, LayerSpec::Dropout(_));
    let batchnorm = |l: &LayerSpec| matches!(l, LayerSpec::BatchNorm(_));
    // Node `index`'s only reader, where that reads nothing else.
    let only = |index: usize| match readers[index][..] {
        [next] if nodes[next].inputs.len() == 1 => Some(next),
        _ => None,
    };
    let mut cases = [false; 6];
    for (index, node) in nodes.iter().enumerate() {
        let joins = node.inputs.len() == 2;
        let then = only(index);
        let then_dropout = then.is_some_and(|next| is(next, dropout));
        if is(index, batchnorm) {
            let relu_next = then.filter(|&next| is(next, relu));
            cases[0] |= relu_next
                .and_then(only)
                .is_some_and(|next| is(next, dropout));
            cases[2] |= readers[index].len() > 1 && readers[index].iter().any(|&r| is(r, relu));
        }
        if is(index, relu) && !joins {
            let after_batchnorm = matches!(node.inputs[0], Source::Node(from)
                if is(from, batchnorm) && readers[from].len() == 1);
            cases[1] |= !after_batchnorm && then_dropout;
        }
        cases[3] |= joins && then_dropout;
        if joins {
            let projected = matches!(node.inputs[1], Source::Node(from)
                if nodes[from].name.contains(".shortcut."));
            cases[4] |= !projected;
            cases[5] |= projected;
        }
    }
    cases
}

/// Random stacks from conv, bn, ln, gn<G>, in, relu, dropout, maxpool, avgpool, flatten, fc and
/// residual blocks (identity, projected, any shortcut; normalizations, ReLUs and dropouts in
/// their bodies and after them), on small images, each matched against the chained float64
/// references: every case of the fusion plan, whichever way the draws combine them.
const RANDOM_STACKS: usize = 16;

fn random_stacks(rng: &mut StdRng) -> Vec<ModelSpec> {
    const FORCED: [Forced; 5] = [
        Forced::BatchNormReluDropout,
        Forced::ReluDropout,
        Forced::BatchNormFeedsTwo,
        Forced::JoinDropout,
        Forced::Mlp,
    ];
    let (mut specs, mut refused) = (Vec::new(), Vec::new());
    while specs.len() < RANDOM_STACKS {
        let image = Image {
            channels: rng.random_range(1..=3),
            height: rng.random_range(4..=7),
            width: rng.random_range(4..=7),
        };
        // The forced residual blocks take each kind in turn.
        let (forced, kind) = (specs.len() % FORCED.len(), specs.len() / FORCED.len() % 3);
        let arch = StackDraw::arch(rng, image, FORCED[forced], kind);
        match ModelSpec::from_arch(&arch, image, BatchNormConfig::default()) {
            Ok(spec) => {
                eprintln!(
                    "{}×{}×{}: {arch}",
                    image.channels, image.height, image.width
                );
                specs.push(spec);
            }
            Err(e) => refused.push(format!("{arch}: {e}")),
        }
    }
    // The draws are meant to be valid: a refusal is a slip of the drawing, tolerated only now
    // and then.
    assert!(refused.len() <= RANDOM_STACKS / 4, "refused: {refused:#?}");
    let mut covered = [false; 6];
    for spec in &specs {
        for (all, one) in covered.iter_mut().zip(fusion_cases(spec)) {
            *all |= one;
        }
    }
    assert_eq!(covered, [true; 6], "fusion cases the draws missed");
    specs
}

backend_test!(random_stacks_match_chained_references, |backend, rng| {
    let specs = random_stacks(rng);
    graph_backward_matches_chained_references(backend, rng, &specs, 7)
});
