//! Architectures by name and in words: the presets, the `--arch` grammar (one token per layer,
//! comma-separated), and the form a spec takes in files.
//!
//! ```text
//! fc<N>                            Linear to N features
//! conv<C>k<K>[s<S>][p<P>]          Conv2d to C channels, K×K kernel, stride S (1), padding P (0)
//! bn                               BatchNorm1d on features, BatchNorm2d on images
//! ln                               LayerNorm: per sample over all its values
//! gn<G>                            GroupNorm: per sample and group of C/G channels
//! in                               InstanceNorm2d: per sample and channel (images only)
//! relu                             ReLU
//! dropout<P>                       Dropout with probability P
//! maxpool<K>[s<S>]                 MaxPool2d, K×K windows, stride S (K)
//! avgpool                          mean of each channel over the image (to 1×1)
//! flatten                          an image to features, PyTorch's (c, h, w) order
//! ```

use std::fmt;

use super::layer_spec::{Image, LayerSpec, SampleShape};
use super::spec::ModelSpec;
use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::spatial::Window;
use crate::{Error, Result};

/// The `--arch` grammar, as `--help` and errors show it.
pub const ARCH_GRAMMAR: &str = "comma-separated layers: fc<N>, conv<C>k<K>[s<S>][p<P>], bn, \
                                ln, gn<G>, in, relu, dropout<P>, maxpool<K>[s<S>], avgpool, \
                                flatten";

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
                    layers.push(LayerSpec::Conv2d { outputs, window });
                    layers.extend(norm.layer(true));
                    layers.push(LayerSpec::Relu);
                    let window = Window {
                        kernel: 2,
                        stride: 2,
                        padding: 0,
                    };
                    layers.push(LayerSpec::MaxPool2d { window });
                }
                layers.push(LayerSpec::Flatten);
                SampleShape::Image(image)
            }
            _ if norm == Norm::Instance => {
                return Err(Error::InvalidArgument(
                    "InstanceNorm normalizes each channel of an image over its positions; an \
                     MLP's features have one value each (use the CNN, or ln or gn:G)"
                        .to_string(),
                ));
            }
            _ => SampleShape::Flat(image.channels * image.positions()),
        };
        for &outputs in hidden {
            layers.push(LayerSpec::Linear { outputs });
            layers.extend(norm.layer(false));
            layers.extend([LayerSpec::Relu, LayerSpec::Dropout { p }]);
        }
        layers.push(LayerSpec::Linear { outputs: classes });
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
    pub const GRAMMAR: &str = "bn, ln, gn:G (G groups), in or none";

    /// Its layer after a convolution (`on_images`) or a hidden Linear.
    fn layer(self, on_images: bool) -> Option<LayerSpec> {
        match self {
            Norm::None => None,
            Norm::Batch => Some(LayerSpec::BatchNorm),
            Norm::Layer => Some(LayerSpec::LayerNorm),
            Norm::Group(groups) => Some(LayerSpec::GroupNorm { groups }),
            Norm::Instance => on_images.then_some(LayerSpec::InstanceNorm),
        }
    }

    /// The normalization `layer` is, if it is one.
    fn of(layer: LayerSpec) -> Option<Norm> {
        Some(match layer {
            LayerSpec::BatchNorm => Norm::Batch,
            LayerSpec::LayerNorm => Norm::Layer,
            LayerSpec::GroupNorm { groups } => Norm::Group(groups),
            LayerSpec::InstanceNorm => Norm::Instance,
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
        let groups = text.strip_prefix("gn:").map(|g| g.parse::<usize>());
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
    /// As `--norm` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Norm::Group(groups) => write!(f, "gn:{groups}"),
            other => f.write_str(&other.token()),
        }
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

    /// `arch` (the `--arch` grammar) on `image` inputs: images if a convolution, pooling or
    /// flatten comes before the first Linear, else the image's values as flat features.
    pub fn from_arch(arch: &str, image: Image, config: BatchNormConfig) -> Result<Self> {
        let layers = parse_layers(arch)?;
        let spatial_first = layers
            .iter()
            .find(|layer| {
                !(layer.is_groupnorm()
                    || matches!(
                        layer,
                        LayerSpec::BatchNorm | LayerSpec::Relu | LayerSpec::Dropout { .. }
                    ))
            })
            .is_some_and(|layer| !matches!(layer, LayerSpec::Linear { .. }));
        let input = if spatial_first {
            SampleShape::Image(image)
        } else {
            SampleShape::Flat(image.channels * image.positions())
        };
        ModelSpec::new(input, layers, config)
    }

    /// The layers in the `--arch` grammar.
    pub fn arch(&self) -> String {
        let tokens: Vec<String> = self.layers().iter().map(ToString::to_string).collect();
        tokens.join(",")
    }

    /// The name of the preset this spec is, with its normalization (mlp, mlp-bn, cnn-ln,
    /// ...), with 128 hidden units and dropout 0.2 on MNIST-sized inputs.
    pub fn preset_name(&self) -> Option<String> {
        let norm = (self.layers().iter())
            .find_map(|&layer| Norm::of(layer))
            .unwrap_or(Norm::None);
        [Preset::Mlp, Preset::Cnn].into_iter().find_map(|base| {
            let config = BatchNormConfig::default();
            let reference = base
                .spec_with_norm(norm, MNIST_IMAGE, &[128], 10, 0.2, config)
                .ok()?;
            (reference.layers() == self.layers() && reference.input() == self.input())
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

impl fmt::Display for LayerSpec {
    /// The layer's `--arch` token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayerSpec::Linear { outputs } => write!(f, "fc{outputs}"),
            LayerSpec::Conv2d { outputs, window } => {
                write!(f, "conv{outputs}k{}", window.kernel)?;
                if window.stride != 1 {
                    write!(f, "s{}", window.stride)?;
                }
                if window.padding != 0 {
                    write!(f, "p{}", window.padding)?;
                }
                Ok(())
            }
            LayerSpec::BatchNorm => write!(f, "bn"),
            LayerSpec::LayerNorm => write!(f, "ln"),
            LayerSpec::GroupNorm { groups } => write!(f, "gn{groups}"),
            LayerSpec::InstanceNorm => write!(f, "in"),
            LayerSpec::Relu => write!(f, "relu"),
            LayerSpec::Dropout { p } => write!(f, "dropout{p}"),
            LayerSpec::MaxPool2d { window } => {
                write!(f, "maxpool{}", window.kernel)?;
                if window.stride != window.kernel {
                    write!(f, "s{}", window.stride)?;
                }
                Ok(())
            }
            LayerSpec::AvgPool => write!(f, "avgpool"),
            LayerSpec::Flatten => write!(f, "flatten"),
        }
    }
}

/// The layers of an `--arch` spec; a malformed token is named with what was expected.
pub fn parse_layers(arch: &str) -> Result<Vec<LayerSpec>> {
    if arch.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "--arch is empty; expected {ARCH_GRAMMAR}"
        )));
    }
    arch.split(',')
        .map(|token| parse_token(token.trim()))
        .collect()
}

/// `text` split before each letter: "32k3p1" → [(None, "32"), (k, "3"), (p, "1")].
fn groups(text: &str) -> Vec<(Option<char>, &str)> {
    let mut groups = Vec::new();
    let (mut start, mut letter) = (0, None);
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphabetic() {
            groups.push((letter, &text[start..i]));
            (start, letter) = (i + c.len_utf8(), Some(c));
        }
    }
    groups.push((letter, &text[start..]));
    groups
}

/// `text` read as `<n>` then `<letter><n>` fields, each letter of `letters` at most once and in
/// that order: the leading value and each letter's, or `None` if it is not of that form.
fn fields<'t>(text: &'t str, letters: &[char]) -> Option<(&'t str, Vec<Option<&'t str>>)> {
    let groups = groups(text);
    let ((None, first), rest) = groups.split_first()? else {
        return None;
    };
    let mut values = vec![None; letters.len()];
    let mut next = 0;
    for &(letter, value) in rest {
        let at = next + letters[next..].iter().position(|&l| Some(l) == letter)?;
        values[at] = Some(value);
        next = at + 1;
    }
    Some((first, values))
}

fn parse_token(token: &str) -> Result<LayerSpec> {
    let expected =
        |what: &str| Error::InvalidArgument(format!("--arch token `{token}`: expected {what}"));
    let positive = |text: Option<&str>| text?.parse::<usize>().ok().filter(|&n| n > 0);
    const FC: &str = "fc<features>, e.g. fc128";
    const CONV: &str = "conv<channels>k<kernel>[s<stride>][p<padding>], e.g. conv32k3p1";
    const POOL: &str = "maxpool<kernel>[s<stride>], e.g. maxpool2";
    const GN: &str = "gn<groups>, e.g. gn8";
    const DROPOUT: &str = "dropout<p> with p in [0, 1), e.g. dropout0.2";
    Ok(match token {
        "bn" => LayerSpec::BatchNorm,
        "ln" => LayerSpec::LayerNorm,
        "in" => LayerSpec::InstanceNorm,
        "relu" => LayerSpec::Relu,
        "avgpool" => LayerSpec::AvgPool,
        "flatten" => LayerSpec::Flatten,
        _ if token.starts_with("gn") => LayerSpec::GroupNorm {
            groups: positive(Some(&token[2..])).ok_or_else(|| expected(GN))?,
        },
        _ if token.starts_with("fc") => LayerSpec::Linear {
            outputs: positive(Some(&token[2..])).ok_or_else(|| expected(FC))?,
        },
        _ if token.starts_with("dropout") => LayerSpec::Dropout {
            p: (token[7..].parse::<f32>().ok())
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| expected(DROPOUT))?,
        },
        _ if token.starts_with("conv") => {
            let conv = || -> Option<LayerSpec> {
                let (outputs, values) = fields(&token[4..], &['k', 's', 'p'])?;
                let window = Window {
                    kernel: positive(values[0])?,
                    stride: values[1].map_or(Some(1), |s| positive(Some(s)))?,
                    padding: values[2].map_or(Some(0), |p| p.parse().ok())?,
                };
                let outputs = positive(Some(outputs))?;
                Some(LayerSpec::Conv2d { outputs, window })
            };
            conv().ok_or_else(|| expected(CONV))?
        }
        _ if token.starts_with("maxpool") => {
            let pool = || -> Option<LayerSpec> {
                let (kernel, values) = fields(&token[7..], &['s'])?;
                let kernel = positive(Some(kernel))?;
                let stride = values[0].map_or(Some(kernel), |s| positive(Some(s)))?;
                Some(LayerSpec::MaxPool2d {
                    window: Window {
                        kernel,
                        stride,
                        padding: 0,
                    },
                })
            };
            pool().ok_or_else(|| expected(POOL))?
        }
        _ => return Err(expected(ARCH_GRAMMAR)),
    })
}

/// A spec as files hold it (checkpoint metadata, a run's settings): an MLP in the fields every
/// version of wgnorm has written, any other stack as its input and `--arch` layers.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Mlp {
        inputs: usize,
        hidden: Vec<usize>,
        classes: usize,
        batchnorm: bool,
        dropout: f32,
        batchnorm_config: BatchNormConfig,
    },
    Layers {
        input: SampleShape,
        layers: String,
        batchnorm_config: BatchNormConfig,
    },
}

impl ModelSpec {
    /// The MLP form, where this spec is an MLP as `ModelSpec::mlp` builds it.
    fn as_mlp(&self) -> Option<Stored> {
        let SampleShape::Flat(inputs) = self.input() else {
            return None;
        };
        let widths: Vec<usize> = (self.layers().iter())
            .filter_map(|layer| match layer {
                LayerSpec::Linear { outputs } => Some(*outputs),
                _ => None,
            })
            .collect();
        let (&classes, hidden) = widths.split_last()?;
        let dropout = (self.layers().iter())
            .find_map(|layer| match layer {
                LayerSpec::Dropout { p } => Some(*p),
                _ => None,
            })
            .unwrap_or(0.0);
        let batchnorm = self.has_batchnorm();
        let rebuilt = ModelSpec::mlp(inputs, hidden, classes, batchnorm, dropout).ok()?;
        (rebuilt.layers() == self.layers()).then(|| Stored::Mlp {
            inputs,
            hidden: hidden.to_vec(),
            classes,
            batchnorm,
            dropout,
            batchnorm_config: self.batchnorm_config(),
        })
    }
}

impl serde::Serialize for ModelSpec {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.as_mlp()
            .unwrap_or_else(|| Stored::Layers {
                input: self.input(),
                layers: self.arch(),
                batchnorm_config: self.batchnorm_config(),
            })
            .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let spec = match Stored::deserialize(deserializer)? {
            Stored::Mlp {
                inputs,
                hidden,
                classes,
                batchnorm,
                dropout,
                batchnorm_config,
            } => ModelSpec::mlp(inputs, &hidden, classes, batchnorm, dropout)
                .map(|spec| spec.with_batchnorm_config(batchnorm_config)),
            Stored::Layers {
                input,
                layers,
                batchnorm_config,
            } => parse_layers(&layers)
                .and_then(|layers| ModelSpec::new(input, layers, batchnorm_config)),
        };
        spec.map_err(serde::de::Error::custom)
    }
}
