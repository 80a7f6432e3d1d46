//! The presets `--model` names (the MLP and the CNN, with or without BatchNorm) and the
//! normalization `--norm` puts in them instead.

use std::fmt;

use super::layer_spec::{Image, SampleShape};
use super::layers::{
    BatchNorm, Conv2d, Dropout, Flatten, GroupNorm, Groups, LayerSpec, Linear, MaxPool2d, Relu,
};
use super::spec::ModelSpec;
use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::spatial::Window;
use crate::{Error, Result};

/// The architectures `--model` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Linear → ReLU → Dropout per hidden width → Linear.
    Mlp,
    /// The MLP with BatchNorm1d after each hidden Linear.
    MlpBn,
    /// Two convolution blocks (Conv 3×3 → ReLU → MaxPool 2, 32 then 64 channels), then the
    /// MLP's head.
    Cnn,
    /// The CNN with BatchNorm2d after each convolution and BatchNorm1d after each hidden Linear.
    CnnBn,
}

impl Preset {
    /// Every preset and its name; `bn` and `nobn` name the MLPs too.
    pub const NAMES: [(&'static str, Preset); 6] = [
        ("mlp", Preset::Mlp),
        ("mlp-bn", Preset::MlpBn),
        ("cnn", Preset::Cnn),
        ("cnn-bn", Preset::CnnBn),
        ("bn", Preset::MlpBn),
        ("nobn", Preset::Mlp),
    ];

    /// The preset called `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, preset)| preset)
    }

    /// Its canonical name.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, preset)| *preset == self)
            .map_or("", |(name, _)| name)
    }

    /// Whether it has BatchNorm layers.
    pub fn batchnorm(self) -> bool {
        self.norm() == Norm::Batch
    }

    /// The normalization it places: BatchNorm for the `-bn` presets, none for the others.
    pub fn norm(self) -> Norm {
        match self {
            Preset::MlpBn | Preset::CnnBn => Norm::Batch,
            Preset::Mlp | Preset::Cnn => Norm::None,
        }
    }

    /// The preset without its normalization: the MLP or the CNN.
    pub fn base(self) -> Preset {
        match self {
            Preset::Mlp | Preset::MlpBn => Preset::Mlp,
            Preset::Cnn | Preset::CnnBn => Preset::Cnn,
        }
    }

    /// The name of its base with `norm`: mlp, mlp-bn (the presets' own names), mlp-ln,
    /// cnn-gn8, ...
    pub fn name_with(self, norm: Norm) -> String {
        match norm {
            Norm::None => self.base().name().to_string(),
            norm => format!("{}-{}", self.base().name(), norm.token()),
        }
    }

    /// Its layers for `image` inputs, with `hidden` widths in the head, `classes` outputs and
    /// dropout `p` after each hidden ReLU.
    pub fn spec(
        self,
        image: Image,
        hidden: &[usize],
        classes: usize,
        p: f32,
        config: BatchNormConfig,
    ) -> Result<ModelSpec> {
        self.spec_with_norm(self.norm(), image, hidden, classes, p, config)
    }

    /// The layers of its base (the MLP or the CNN) with `norm` after each convolution and each
    /// hidden Linear, where BatchNorm goes in the `-bn` presets. InstanceNorm normalizes
    /// images only, so the head of a CNN has none and an MLP cannot take it.
    pub fn spec_with_norm(
        self,
        norm: Norm,
        image: Image,
        hidden: &[usize],
        classes: usize,
        p: f32,
        config: BatchNormConfig,
    ) -> Result<ModelSpec> {
        let mut layers = Vec::new();
        let input = match self.base() {
            Preset::Cnn => {
                for outputs in [32, 64] {
                    let window = Window {
                        kernel: 3,
                        stride: 1,
                        padding: 1,
                    };
                    layers.push(LayerSpec::Conv2d(Conv2d { outputs, window }));
                    layers.extend(norm.layer(true));
                    layers.push(LayerSpec::Relu(Relu));
                    let window = Window {
                        kernel: 2,
                        stride: 2,
                        padding: 0,
                    };
                    layers.push(LayerSpec::MaxPool2d(MaxPool2d { window }));
                }
                layers.push(LayerSpec::Flatten(Flatten));
                SampleShape::Image(image)
            }
            _ if norm == Norm::Instance => {
                return Err(Error::InvalidArgument(
                    "InstanceNorm normalizes each channel of an image over its positions; an \
                     MLP's features have one value each (use the CNN, or ln or gn<G>)"
                        .to_string(),
                ));
            }
            _ => SampleShape::Flat(image.channels * image.positions()),
        };
        for &outputs in hidden {
            layers.push(LayerSpec::Linear(Linear { outputs }));
            layers.extend(norm.layer(false));
            layers.extend([LayerSpec::Relu(Relu), LayerSpec::Dropout(Dropout { p })]);
        }
        layers.push(LayerSpec::Linear(Linear { outputs: classes }));
        ModelSpec::new(input, layers, config)
    }
}

/// The normalization layer a preset places after each convolution and hidden Linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// None.
    None,
    /// BatchNorm.
    Batch,
    /// LayerNorm.
    Layer,
    /// GroupNorm with this many groups.
    Group(usize),
    /// InstanceNorm (after convolutions only).
    Instance,
}

impl Norm {
    /// How `--norm` and `--norms` write them.
    pub const GRAMMAR: &str = "bn, ln, gn<G> or gn:<G> (G groups), in or none";

    /// Its layer after a convolution (`on_images`) or a hidden Linear.
    fn layer(self, on_images: bool) -> Option<LayerSpec> {
        match self {
            Norm::None => None,
            Norm::Batch => Some(LayerSpec::BatchNorm(BatchNorm)),
            Norm::Layer => Some(LayerSpec::GroupNorm(GroupNorm::LAYER)),
            Norm::Group(groups) => Some(LayerSpec::GroupNorm(GroupNorm::groups(groups))),
            Norm::Instance => on_images.then_some(LayerSpec::GroupNorm(GroupNorm::INSTANCE)),
        }
    }

    /// The normalization `layer` is, if it is one.
    fn of(layer: LayerSpec) -> Option<Norm> {
        Some(match layer {
            LayerSpec::BatchNorm(_) => Norm::Batch,
            LayerSpec::GroupNorm(GroupNorm {
                groups: Groups::All,
            }) => Norm::Layer,
            LayerSpec::GroupNorm(GroupNorm {
                groups: Groups::Count(groups),
            }) => Norm::Group(groups),
            LayerSpec::GroupNorm(GroupNorm {
                groups: Groups::PerChannel,
            }) => Norm::Instance,
            _ => return None,
        })
    }

    /// Its name in model names and folders: bn, ln, gn8, in, or none.
    pub fn token(self) -> String {
        match self {
            Norm::None => "none".to_string(),
            Norm::Group(groups) => format!("gn{groups}"),
            other => other
                .layer(true)
                .map_or(String::new(), |layer| layer.to_string()),
        }
    }
}

impl std::str::FromStr for Norm {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        // gn8 as `--arch` writes it, or gn:8.
        let groups =
            (text.strip_prefix("gn")).map(|g| g.strip_prefix(':').unwrap_or(g).parse::<usize>());
        Ok(match (text, groups) {
            ("bn", _) => Norm::Batch,
            ("ln", _) => Norm::Layer,
            ("in", _) => Norm::Instance,
            ("none", _) => Norm::None,
            (_, Some(Ok(groups))) if groups > 0 => Norm::Group(groups),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "normalization `{text}`: expected {}",
                    Self::GRAMMAR
                )));
            }
        })
    }
}

impl fmt::Display for Norm {
    /// As `--norm` takes it: its token, the `--arch` one (gn8).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token())
    }
}

impl ModelSpec {
    /// An MLP: `inputs` → [Linear → (BatchNorm) → ReLU → Dropout p] per hidden width → Linear
    /// to `classes`, with PyTorch's BatchNorm settings.
    pub fn mlp(
        inputs: usize,
        hidden: &[usize],
        classes: usize,
        batchnorm: bool,
        p: f32,
    ) -> Result<Self> {
        let preset = if batchnorm {
            Preset::MlpBn
        } else {
            Preset::Mlp
        };
        let image = Image {
            channels: 1,
            height: 1,
            width: inputs,
        };
        preset.spec(image, hidden, classes, p, BatchNormConfig::default())
    }

    /// The course material's MNIST MLP: 784 → Linear 128 → (BatchNorm) → ReLU → Dropout 0.2 →
    /// Linear 10, with PyTorch's BatchNorm settings.
    pub fn reference_mlp(batchnorm: bool) -> Self {
        let preset = if batchnorm {
            Preset::MlpBn
        } else {
            Preset::Mlp
        };
        Self::reference(preset)
    }

    /// `preset` on MNIST's 1×28×28 images with one hidden layer of 128, dropout 0.2 and
    /// PyTorch's BatchNorm settings.
    pub fn reference(preset: Preset) -> Self {
        match preset.spec(MNIST_IMAGE, &[128], 10, 0.2, BatchNormConfig::default()) {
            Ok(spec) => spec,
            Err(error) => unreachable!("the presets build on MNIST: {error}"),
        }
    }

    /// The name of the preset this spec is, with its normalization (mlp, mlp-bn, cnn-ln,
    /// ...), with 128 hidden units and dropout 0.2 on MNIST-sized inputs.
    pub fn preset_name(&self) -> Option<String> {
        let norm = (self.nodes().iter())
            .find_map(|node| Norm::of(node.layer))
            .unwrap_or(Norm::None);
        [Preset::Mlp, Preset::Cnn].into_iter().find_map(|base| {
            let config = BatchNormConfig::default();
            let reference = base
                .spec_with_norm(norm, MNIST_IMAGE, &[128], 10, 0.2, config)
                .ok()?;
            (reference.blocks() == self.blocks() && reference.input() == self.input())
                .then(|| base.name_with(norm))
        })
    }
}

/// MNIST's and Fashion-MNIST's images.
pub const MNIST_IMAGE: Image = Image {
    channels: 1,
    height: 28,
    width: 28,
};
