//! Comparing the models data-parallel ranks and one device trained.

use wgnorm::graph::{HostModel, LayerSpec, ModelSpec, Source};

/// The bias of each layer that feeds a BatchNorm, and that BatchNorm's running mean. The
/// BatchNorm subtracts the bias again, so its exact gradient is zero and its values are
/// rounding noise (which Adam scales up to steps of the learning rate's size): two runs whose
/// sums differ only in order hold different noise there, and the running mean carries it.
pub fn rounding_noise(spec: &ModelSpec) -> Vec<String> {
    let nodes = spec.nodes();
    let mut names = Vec::new();
    for node in nodes {
        if let (LayerSpec::BatchNorm(_), [Source::Node(before)]) = (&node.layer, &node.inputs[..])
            && matches!(
                nodes[*before].layer,
                LayerSpec::Linear(_) | LayerSpec::Conv2d(_)
            )
        {
            names.push(nodes[*before].tensor_name("bias"));
            names.push(node.tensor_name("running_mean"));
        }
    }
    names
}

/// The largest normwise relative difference of any tensor of `a` from `b`'s but those named in
/// `skip`, and its name.
pub fn largest_difference(a: &HostModel, b: &HostModel, skip: &[String]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, values) in b
        .tensors()
        .filter(|(name, _)| !skip.iter().any(|s| s == name))
    {
        let other = a.tensor(name).unwrap();
        let diff: f64 = (values.iter().zip(other))
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        let size: f64 = values.iter().map(|&x| f64::from(x).powi(2)).sum();
        let error = (diff / size.max(1e-30)).sqrt();
        if error > worst.0 {
            worst = (error, name.to_string());
        }
    }
    worst
}

/// The largest normwise relative difference between the models two `wgnorm train` runs saved in
/// `a/model.safetensors` and `b/model.safetensors`, over every tensor but the `rounding_noise`
/// ones, and its name.
pub fn saved_models_differ(a: &std::path::Path, b: &std::path::Path) -> (f64, String) {
    let load = |dir: &std::path::Path| {
        wgnorm::checkpoint::load_model(&dir.join("model.safetensors")).unwrap()
    };
    let (a, b) = (load(a), load(b));
    largest_difference(&a.model, &b.model, &rounding_noise(&b.spec))
}
