//! The presets `--model` names (the MLP and the CNN, with or without BatchNorm, and the
//! ResNets) and the normalization `--norm` puts in them instead.

use std::fmt;

use super::layer_spec::{Image, SampleShape};
use super::layers::{
    AvgPool, BatchNorm, Conv2d, Dropout, Flatten, GroupNorm, Groups, LayerSpec, Linear, MaxPool2d,
    Relu,
};
use super::residual::{Block, Residual};
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
    /// ResNet-8: `ModelSpec::resnet` with one residual block per stage.
    ResNet8,
    /// ResNet-20: three residual blocks per stage.
    ResNet20,
    /// ResNet-56: nine residual blocks per stage.
    ResNet56,
}

impl Preset {
    /// Every preset and its name; `bn` and `nobn` name the MLPs too.
    pub const NAMES: [(&'static str, Preset); 9] = [
        ("mlp", Preset::Mlp),
        ("mlp-bn", Preset::MlpBn),
        ("cnn", Preset::Cnn),
        ("cnn-bn", Preset::CnnBn),
        ("resnet8", Preset::ResNet8),
        ("resnet20", Preset::ResNet20),
        ("resnet56", Preset::ResNet56),
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

    /// The normalization it places: BatchNorm for the `-bn` presets and the ResNets, none for
    /// the MLP and the CNN.
    pub fn norm(self) -> Norm {
        match self {
            Preset::MlpBn | Preset::CnnBn => Norm::Batch,
            Preset::ResNet8 | Preset::ResNet20 | Preset::ResNet56 => Norm::Batch,
            Preset::Mlp | Preset::Cnn => Norm::None,
        }
    }

    /// The preset `--norm` changes the normalization of: the MLP or the CNN for their `-bn`
    /// presets, and each other preset itself.
    pub fn base(self) -> Preset {
        match self {
            Preset::Mlp | Preset::MlpBn => Preset::Mlp,
            Preset::Cnn | Preset::CnnBn => Preset::Cnn,
            resnet => resnet,
        }
    }

    /// Every preset that is its own base, whose normalization `--norm` sets.
    pub const BASES: [Preset; 5] = [
        Preset::Mlp,
        Preset::Cnn,
        Preset::ResNet8,
        Preset::ResNet20,
        Preset::ResNet56,
    ];

    /// The name of its base with `norm`: the base's own name with the base's normalization
    /// (mlp, resnet8), else the base's name and the normalization's token (mlp-bn, mlp-ln,
    /// cnn-gn8, resnet8-none, ...).
    pub fn name_with(self, norm: Norm) -> String {
        let base = self.base();
        if norm == base.norm() {
            base.name().to_string()
        } else {
            format!("{}-{}", base.name(), norm.token())
        }
    }

    /// The residual blocks in each stage of a ResNet preset (ResNet-(6n+2) has n), or `None`
    /// for the MLP and the CNN.
    pub fn residual_blocks_per_stage(self) -> Option<usize> {
        match self {
            Preset::ResNet8 => Some(1),
            Preset::ResNet20 => Some(3),
            Preset::ResNet56 => Some(9),
            Preset::Mlp | Preset::MlpBn | Preset::Cnn | Preset::CnnBn => None,
        }
    }

    /// Whether its head has hidden Linear layers with dropout, which `--hidden` and `--dropout`
    /// shape: the MLP's and the CNN's do; a ResNet's is global average pooling and one Linear.
    pub fn has_hidden_layers(self) -> bool {
        self.residual_blocks_per_stage().is_none()
    }

    /// The hidden widths of its reference form: 128 for the MLP and the CNN, none for a ResNet.
    fn reference_hidden(self) -> &'static [usize] {
        if self.has_hidden_layers() {
            &[128]
        } else {
            &[]
        }
    }

    /// Its layers for `image` inputs, with `hidden` widths in the head (none for a ResNet),
    /// `classes` outputs and dropout `p` after each hidden ReLU.
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

    /// The layers of its base with `norm` after each convolution and each hidden Linear, where
    /// BatchNorm goes in the `-bn` presets and the ResNets. InstanceNorm normalizes images
    /// only, so the head of a CNN has none and an MLP cannot take it. A ResNet has no hidden
    /// layers, and refuses any `hidden` widths.
    pub fn spec_with_norm(
        self,
        norm: Norm,
        image: Image,
        hidden: &[usize],
        classes: usize,
        p: f32,
        config: BatchNormConfig,
    ) -> Result<ModelSpec> {
        if let Some(blocks_per_stage) = self.residual_blocks_per_stage() {
            if !hidden.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{} ends in global average pooling and one Linear: it has no hidden \
                     layers to give widths {hidden:?}",
                    self.name()
                )));
            }
            return ModelSpec::resnet(blocks_per_stage, norm, image, classes, config);
        }
        let mut layers = Vec::new();
        let input = match self.base() {
            Preset::Cnn => {
                for outputs in [32, 64] {
                    layers.push(conv(outputs, 3, 1, 1));
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

    /// `preset` on MNIST's 1×28×28 images with one hidden layer of 128 and dropout 0.2 (a
    /// ResNet has none) and PyTorch's BatchNorm settings.
    pub fn reference(preset: Preset) -> Self {
        let hidden = preset.reference_hidden();
        match preset.spec(MNIST_IMAGE, hidden, 10, 0.2, BatchNormConfig::default()) {
            Ok(spec) => spec,
            Err(error) => unreachable!("the presets build on MNIST: {error}"),
        }
    }

    /// The name of the preset this spec is, with its normalization (mlp, mlp-bn, cnn-ln,
    /// resnet8, resnet20-none, ...), in its reference form (`ModelSpec::reference`) on
    /// MNIST-sized inputs.
    pub fn preset_name(&self) -> Option<String> {
        let norm = (self.nodes().iter())
            .find_map(|node| Norm::of(node.layer))
            .unwrap_or(Norm::None);
        Preset::BASES.into_iter().find_map(|base| {
            let config = BatchNormConfig::default();
            let hidden = base.reference_hidden();
            let reference = base
                .spec_with_norm(norm, MNIST_IMAGE, hidden, 10, 0.2, config)
                .ok()?;
            (reference.blocks() == self.blocks() && reference.input() == self.input())
                .then(|| base.name_with(norm))
        })
    }
}

impl ModelSpec {
    /// ResNet-(6n+2), He et al.'s network for small images (their CIFAR-10 ResNets, "Deep
    /// Residual Learning for Image Recognition", 2016), with n = `blocks_per_stage`: a 3×3
    /// convolution to 16 channels, then three stages of n residual blocks of two 3×3
    /// convolutions with 16, 32 and 64 channels (the first block of stages 2 and 3 halves the
    /// image with stride 2 and projects its shortcut with a 1×1 convolution of stride 2), then
    /// global average pooling and a Linear to `classes`. `norm` follows every convolution, the
    /// projections' included (BatchNorm in the paper; none leaves the convolutions alone).
    pub fn resnet(
        blocks_per_stage: usize,
        norm: Norm,
        image: Image,
        classes: usize,
        config: BatchNormConfig,
    ) -> Result<Self> {
        if blocks_per_stage == 0 {
            return Err(Error::InvalidArgument(
                "a ResNet needs at least one residual block per stage".to_string(),
            ));
        }
        let normalized = |layer: LayerSpec| [Some(layer), norm.layer(true)].into_iter().flatten();
        let mut blocks: Vec<Block> = normalized(conv(16, 3, 1, 1))
            .chain([LayerSpec::Relu(Relu)])
            .map(Block::Layer)
            .collect();
        for (stage, channels) in [16, 32, 64].into_iter().enumerate() {
            for block in 0..blocks_per_stage {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let body = (normalized(conv(channels, 3, stride, 1)))
                    .chain([LayerSpec::Relu(Relu)])
                    .chain(normalized(conv(channels, 3, 1, 1)))
                    .collect();
                let shortcut = match stride {
                    1 => Vec::new(),
                    _ => normalized(conv(channels, 1, stride, 0)).collect(),
                };
                blocks.push(Block::Residual(Residual { body, shortcut }));
            }
        }
        blocks.extend(
            [
                LayerSpec::AvgPool(AvgPool),
                LayerSpec::Flatten(Flatten),
                LayerSpec::Linear(Linear { outputs: classes }),
            ]
            .map(Block::Layer),
        );
        Self::with_blocks(SampleShape::Image(image), blocks, config)
    }
}

/// A convolution to `outputs` channels with a `kernel`×`kernel` window.
fn conv(outputs: usize, kernel: usize, stride: usize, padding: usize) -> LayerSpec {
    let window = Window {
        kernel,
        stride,
        padding,
    };
    LayerSpec::Conv2d(Conv2d { outputs, window })
}

/// MNIST's and Fashion-MNIST's images.
pub const MNIST_IMAGE: Image = Image {
    channels: 1,
    height: 28,
    width: 28,
};
