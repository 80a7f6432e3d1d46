//! Residual blocks as a spec: the graph of nodes they make (names and the values each node
//! reads), their `--arch` form and its round trip through a checkpoint, their PyTorch module,
//! and the errors of blocks that cannot be built. Their numbers are checked against the chained
//! float64 reference in `tests/graph.rs`.

#[macro_use]
mod common;

use common::normal;
use wgnorm::Backend;
use wgnorm::checkpoint;
use wgnorm::graph::{HostModel, Image, Init, ModelSpec, Sequential, Source, StepKey};
use wgnorm::ops::batchnorm::{BatchNormConfig, Mode};
use wgnorm::ops::loss::{LossOps, metric};

const IMAGE: Image = Image {
    channels: 2,
    height: 6,
    width: 6,
};

fn spec(arch: &str) -> ModelSpec {
    ModelSpec::from_arch(arch, IMAGE, BatchNormConfig::default()).unwrap()
}

#[test]
fn blocks_make_the_graph_pytorch_names() {
    let spec = spec(
        "conv4k3p1,res(conv4k3p1,bn),res8s2(conv8k3s2p1),res(relu|conv8k1),avgpool,flatten,fc3",
    );
    let nodes: Vec<(&str, Vec<Source>)> = (spec.nodes().iter())
        .map(|node| (node.name.as_str(), node.inputs.clone()))
        .collect();
    use Source::{Input, Node};
    assert_eq!(
        nodes,
        [
            ("0", vec![Input]),
            ("1.body.0", vec![Node(0)]),
            ("1.body.1", vec![Node(1)]),
            // The identity shortcut: the join adds the block's input to the body's output.
            ("1.relu", vec![Node(2), Node(0)]),
            ("2.body.0", vec![Node(3)]),
            // The projection reads the block's input too.
            ("2.shortcut.0", vec![Node(3)]),
            ("2.shortcut.1", vec![Node(5)]),
            ("2.relu", vec![Node(4), Node(6)]),
            ("3.body.0", vec![Node(7)]),
            ("3.shortcut.0", vec![Node(7)]),
            ("3.relu", vec![Node(8), Node(9)]),
            ("4", vec![Node(10)]),
            ("5", vec![Node(11)]),
            ("6", vec![Node(12)]),
        ]
    );
    let names: Vec<String> = spec.tensors().into_iter().map(|t| t.name).collect();
    assert!(
        names.contains(&"2.shortcut.1.running_var".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"3.shortcut.0.weight".to_string()),
        "{names:?}"
    );
    assert_eq!(
        spec.torch_module(),
        "nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), \
         Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), None), \
         Residual(nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1)), \
         nn.Sequential(nn.Conv2d(4, 8, 1, stride=2), nn.BatchNorm2d(8))), \
         Residual(nn.Sequential(nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 1))), \
         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))"
    );
}

#[test]
fn residual_archs_round_trip_through_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [
        "conv4k3p1,bn,relu,res(conv4k3p1,bn,relu,conv4k3p1,bn),avgpool,flatten,fc3",
        "conv4k3p1,res8s2(conv8k3s2p1,bn,relu,conv8k3p1,bn),res8(conv8k3p1),flatten,fc3",
        "conv4k3p1,res(conv4k3p1|conv4k1),res(relu,dropout0.5|bn),flatten,fc3",
    ] {
        let spec = spec(arch);
        assert_eq!(spec.arch(), arch);
        let model = HostModel::initial(&spec, Init::Torch, 3);
        let path = dir.path().join("model.safetensors");
        checkpoint::save_model(&path, &spec, &model, 1, wgnorm::Dtype::F32).unwrap();
        let saved = checkpoint::load_model(&path).unwrap();
        assert_eq!(saved.spec, spec, "{arch}");
        assert_eq!(saved.model, model, "{arch}");
    }
}

#[test]
fn blocks_that_cannot_be_built_are_refused_by_name() {
    let config = BatchNormConfig::default();
    for (arch, message) in [
        (
            "conv4k3p1,res(conv8k3p1),flatten,fc3",
            "layer 1 (`res(conv8k3p1)`): the body gives 8×6×6 images but the shortcut 4×6×6 \
             images; project the shortcut with res8s<stride>(...)",
        ),
        (
            "conv4k3p1,res(),flatten,fc3",
            "a residual block's body has no layers",
        ),
        (
            "conv4k3p1,res(relu|),flatten,fc3",
            "a residual block's shortcut has no layers",
        ),
        (
            "conv4k3p1,res(res(relu)),flatten,fc3",
            "a residual block holds layers, not blocks",
        ),
        ("conv4k3p1,res(relu,flatten,fc3", "a `(` is not closed"),
        ("conv4k3p1,relu),flatten,fc3", "a `)` closes nothing"),
        (
            "conv4k3p1,res4x(relu),flatten,fc3",
            "expected res(<layers>)",
        ),
        (
            "conv4k3p1,res4(relu|bn),flatten,fc3",
            "expected res(<layers>)",
        ),
        (
            "conv4k3p1,res(conv4k3p1,bn,fc5),flatten,fc3",
            "layer 1.body.2 (`fc5`)",
        ),
    ] {
        let error = ModelSpec::from_arch(arch, IMAGE, config)
            .unwrap_err()
            .to_string();
        assert!(error.contains(message), "{arch}: {error}");
        assert!(!error.contains('\n'), "{arch}: {error}");
    }
}

// A model whose BatchNorm's fused ReLU gives the logits: the fusion plan leaves that ReLU a
// pass of its own, so the logits are the pass's to hand over, in training and in evaluation.
backend_test!(a_model_may_end_in_batchnorm_and_relu, |backend, rng| {
    let spec = ModelSpec::new(
        wgnorm::graph::SampleShape::Flat(6),
        wgnorm::graph::parse_layers("fc4,bn,relu").unwrap(),
        BatchNormConfig::default(),
    )
    .unwrap();
    let host = HostModel::initial(&spec, Init::Torch, 1);
    let mut model = Sequential::upload(backend, &spec, &host).unwrap();
    let x = normal(rng, 5 * 6, 0.5, 1.0);
    let key = StepKey::new(1, 0);
    let eval = backend.upload(&x).unwrap();
    model.forward(backend, Mode::Eval, eval, 5, key).unwrap();
    let train = backend.upload(&x).unwrap();
    let (logits, tape) = model.forward(backend, Mode::Train, train, 5, key).unwrap();
    let labels = backend.upload(&[0.0, 1.0, 2.0, 3.0, 0.0]).unwrap();
    let mut dlogits = backend.scratch(5 * 4).unwrap();
    let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
    backend
        .softmax_cross_entropy(&logits, &labels, 4, Some(&mut dlogits), &mut metrics)
        .unwrap();
    let grads = model.backward(backend, tape, dlogits).unwrap();
    assert_eq!(grads.len(), spec.params().len());
});
