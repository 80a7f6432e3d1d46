//! Residual blocks, ResNet v1's: y = relu(body(x) + shortcut(x)), where the shortcut is x itself
//! or, where the body changes the shape, a 1×1 convolution and a BatchNorm that project x to it.
//! In `--arch`, `res(<layers>)` has the identity shortcut, `res<C>[s<S>](<layers>)` the
//! projection to C channels with stride S (1), and `res(<layers>|<layers>)` any shortcut (a
//! folded projection is a convolution alone).

use std::fmt;

use super::layers::{BatchNorm, Conv2d, LayerSpec};
use crate::ops::spatial::Window;

/// A residual block: its body, and its shortcut (empty for the identity).
#[derive(Clone, Debug, PartialEq)]
pub struct Residual {
    /// The layers of the body, in order.
    pub body: Vec<LayerSpec>,
    /// The layers of the shortcut, in order; none adds the block's input as it is.
    pub shortcut: Vec<LayerSpec>,
}

impl Residual {
    /// The projection shortcut: a 1×1 convolution to `channels` channels with stride `stride`,
    /// then a BatchNorm.
    pub fn projection(channels: usize, stride: usize) -> Vec<LayerSpec> {
        let window = Window {
            kernel: 1,
            stride,
            padding: 0,
        };
        vec![
            LayerSpec::Conv2d(Conv2d {
                outputs: channels,
                window,
            }),
            LayerSpec::BatchNorm(BatchNorm),
        ]
    }

    /// The channels and stride of its shortcut, where that is a projection.
    fn as_projection(&self) -> Option<(usize, usize)> {
        match self.shortcut[..] {
            [LayerSpec::Conv2d(conv), LayerSpec::BatchNorm(_)]
                if conv.window.kernel == 1 && conv.window.padding == 0 =>
            {
                Some((conv.outputs, conv.window.stride))
            }
            _ => None,
        }
    }
}

/// One item of a model's top-level stack: a layer, or a residual block.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    /// A layer.
    Layer(LayerSpec),
    /// A residual block.
    Residual(Residual),
}

impl From<LayerSpec> for Block {
    fn from(layer: LayerSpec) -> Self {
        Block::Layer(layer)
    }
}

impl fmt::Display for Block {
    /// The block in the `--arch` grammar.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Block::Layer(layer) => write!(f, "{layer}"),
            Block::Residual(residual) => {
                let tokens = |layers: &[LayerSpec]| -> String {
                    let tokens: Vec<String> = layers.iter().map(ToString::to_string).collect();
                    tokens.join(",")
                };
                let body = tokens(&residual.body);
                match residual.as_projection() {
                    Some((channels, 1)) => write!(f, "res{channels}({body})"),
                    Some((channels, stride)) => write!(f, "res{channels}s{stride}({body})"),
                    None if residual.shortcut.is_empty() => write!(f, "res({body})"),
                    None => write!(f, "res({body}|{})", tokens(&residual.shortcut)),
                }
            }
        }
    }
}
