//! Architectures in words: the `--arch` grammar (one token per layer, comma-separated) and the
//! form a spec takes in files. The presets are in `presets.rs`.
//!
//! ```text
//! fc<N>                            Linear to N features
//! conv<C>k<K>[s<S>][p<P>]          Conv2d to C channels, K×K kernel, stride S (1), padding P (0)
//! bn                               BatchNorm1d on features, BatchNorm2d on images
//! ln                               LayerNorm: per sample over all its values
//! gn<G>                            GroupNorm: per sample and group of C/G channels (also gn:<G>)
//! in                               InstanceNorm2d: per sample and channel (images only)
//! relu                             ReLU
//! dropout<P>                       Dropout with probability P
//! maxpool<K>[s<S>]                 MaxPool2d, K×K windows, stride S (K)
//! avgpool                          mean of each channel over the image (to 1×1)
//! flatten                          an image to features, PyTorch's (c, h, w) order
//! res(<layers>)                    a residual block: relu(layers(x) + x)
//! res<C>[s<S>](<layers>)           the same with the shortcut projected by a 1×1 convolution
//!                                  to C channels with stride S (1) and a BatchNorm
//! res(<layers>|<layers>)           the same with any shortcut: relu(body(x) + shortcut(x))
//! ```

use super::layer_spec::{Image, SampleShape};
use super::layers::{
    AvgPool, BatchNorm, Conv2d, Dropout, Flatten, GroupNorm, LayerSpec, Linear, MaxPool2d, Relu,
};
use super::residual::{Block, Residual};
use super::spec::ModelSpec;
use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::spatial::Window;
use crate::{Error, Result};

/// The `--arch` grammar, as `--help` and errors show it.
pub const ARCH_GRAMMAR: &str = "comma-separated layers: fc<N>, conv<C>k<K>[s<S>][p<P>], bn, \
                                ln, gn<G>, in, relu, dropout<P>, maxpool<K>[s<S>], avgpool, \
                                flatten, and residual blocks res(<layers>), \
                                res<C>[s<S>](<layers>) or res(<layers>|<layers>)";

impl ModelSpec {
    /// `arch` (the `--arch` grammar) on `image` inputs: images if a convolution, pooling,
    /// flatten or residual block comes before the first Linear, else the image's values as flat
    /// features.
    pub fn from_arch(arch: &str, image: Image, config: BatchNormConfig) -> Result<Self> {
        let blocks = parse_blocks(arch)?;
        let spatial_first = blocks
            .iter()
            .find(|block| match block {
                Block::Layer(layer) => !matches!(
                    layer,
                    LayerSpec::BatchNorm(_)
                        | LayerSpec::GroupNorm(_)
                        | LayerSpec::Relu(_)
                        | LayerSpec::Dropout(_)
                ),
                Block::Residual(_) => true,
            })
            .is_some_and(|block| !matches!(block, Block::Layer(LayerSpec::Linear(_))));
        let input = if spatial_first {
            SampleShape::Image(image)
        } else {
            SampleShape::Flat(image.values())
        };
        ModelSpec::with_blocks(input, blocks, config)
    }

    /// The model in the `--arch` grammar.
    pub fn arch(&self) -> String {
        let tokens: Vec<String> = self.blocks().iter().map(ToString::to_string).collect();
        tokens.join(",")
    }
}

/// `arch` split at its top-level commas (not those inside a block's parentheses).
fn split_top_level(arch: &str) -> Result<Vec<&str>> {
    let (mut tokens, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in arch.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    Error::InvalidArgument(format!("--arch `{arch}`: a `)` closes nothing"))
                })?
            }
            ',' if depth == 0 => {
                tokens.push(arch[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(Error::InvalidArgument(format!(
            "--arch `{arch}`: a `(` is not closed"
        )));
    }
    tokens.push(arch[start..].trim());
    Ok(tokens)
}

/// The layers and residual blocks of an `--arch` spec; a malformed token is named with what was
/// expected.
pub fn parse_blocks(arch: &str) -> Result<Vec<Block>> {
    if arch.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "--arch is empty; expected {ARCH_GRAMMAR}"
        )));
    }
    split_top_level(arch)?
        .into_iter()
        .map(|token| match token.split_once('(') {
            Some((head, rest)) => parse_residual(token, head, rest),
            None => parse_token(token).map(Block::Layer),
        })
        .collect()
}

/// `res[<C>[s<S>]](<layers>)`: `head` before the parenthesis, `rest` after it.
fn parse_residual(token: &str, head: &str, rest: &str) -> Result<Block> {
    const RES: &str = "res(<layers>), res<channels>[s<stride>](<layers>) or \
                       res(<layers>|<layers>), e.g. res32s2(conv32k3s2p1,bn,relu,conv32k3p1,bn)";
    let expected = || Error::InvalidArgument(format!("--arch token `{token}`: expected {RES}"));
    let inside = rest.strip_suffix(')').ok_or_else(expected)?;
    if inside.contains('(') {
        return Err(Error::InvalidArgument(format!(
            "--arch token `{token}`: a residual block holds layers, not blocks"
        )));
    }
    let empty = |what: &str| {
        Error::InvalidArgument(format!(
            "--arch token `{token}`: a residual block's {what} has no layers; expected {RES}"
        ))
    };
    let (body, shortcut) = match inside.split_once('|') {
        Some((_, shortcut)) if shortcut.trim().is_empty() => return Err(empty("shortcut")),
        Some((body, shortcut)) => (body, parse_layers(shortcut)?),
        None => (inside, Vec::new()),
    };
    if body.trim().is_empty() {
        return Err(empty("body"));
    }
    let shortcut = match head.strip_prefix("res").ok_or_else(expected)? {
        "" => shortcut,
        _ if !shortcut.is_empty() => return Err(expected()),
        projection => {
            let positive = |text: Option<&str>| text?.parse::<usize>().ok().filter(|&n| n > 0);
            let (channels, values) = fields(projection, &['s']).ok_or_else(expected)?;
            Residual::projection(
                positive(Some(channels)).ok_or_else(expected)?,
                (values[0].map_or(Some(1), |s| positive(Some(s)))).ok_or_else(expected)?,
            )
        }
    };
    Ok(Block::Residual(Residual {
        body: parse_layers(body)?,
        shortcut,
    }))
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
        "bn" => LayerSpec::BatchNorm(BatchNorm),
        "ln" => LayerSpec::GroupNorm(GroupNorm::LAYER),
        "in" => LayerSpec::GroupNorm(GroupNorm::INSTANCE),
        "relu" => LayerSpec::Relu(Relu),
        "avgpool" => LayerSpec::AvgPool(AvgPool),
        "flatten" => LayerSpec::Flatten(Flatten),
        // gn8, or gn:8 as `--norm` also takes it.
        _ if token.starts_with("gn") => LayerSpec::GroupNorm(GroupNorm::groups(
            positive(token[2..].strip_prefix(':').or(Some(&token[2..])))
                .ok_or_else(|| expected(GN))?,
        )),
        _ if token.starts_with("fc") => LayerSpec::Linear(Linear {
            outputs: positive(Some(&token[2..])).ok_or_else(|| expected(FC))?,
        }),
        _ if token.starts_with("dropout") => LayerSpec::Dropout(Dropout {
            p: (token[7..].parse::<f32>().ok())
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| expected(DROPOUT))?,
        }),
        _ if token.starts_with("conv") => {
            let conv = || -> Option<LayerSpec> {
                let (outputs, values) = fields(&token[4..], &['k', 's', 'p'])?;
                let window = Window {
                    kernel: positive(values[0])?,
                    stride: values[1].map_or(Some(1), |s| positive(Some(s)))?,
                    padding: values[2].map_or(Some(0), |p| p.parse().ok())?,
                };
                let outputs = positive(Some(outputs))?;
                Some(LayerSpec::Conv2d(Conv2d { outputs, window }))
            };
            conv().ok_or_else(|| expected(CONV))?
        }
        _ if token.starts_with("maxpool") => {
            let pool = || -> Option<LayerSpec> {
                let (kernel, values) = fields(&token[7..], &['s'])?;
                let kernel = positive(Some(kernel))?;
                let stride = values[0].map_or(Some(kernel), |s| positive(Some(s)))?;
                Some(LayerSpec::MaxPool2d(MaxPool2d {
                    window: Window {
                        kernel,
                        stride,
                        padding: 0,
                    },
                }))
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
        let layers = self.layers()?;
        let widths: Vec<usize> = (layers.iter())
            .filter_map(|layer| match layer {
                LayerSpec::Linear(linear) => Some(linear.outputs),
                _ => None,
            })
            .collect();
        let (&classes, hidden) = widths.split_last()?;
        let dropout = (layers.iter())
            .find_map(|layer| match layer {
                LayerSpec::Dropout(dropout) => Some(dropout.p),
                _ => None,
            })
            .unwrap_or(0.0);
        let batchnorm = self.has_batchnorm();
        let rebuilt = ModelSpec::mlp(inputs, hidden, classes, batchnorm, dropout).ok()?;
        (rebuilt.layers() == Some(layers)).then(|| Stored::Mlp {
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
            } => parse_blocks(&layers)
                .and_then(|blocks| ModelSpec::with_blocks(input, blocks, batchnorm_config)),
        };
        spec.map_err(serde::de::Error::custom)
    }
}
