//! The layers a `ModelSpec` lists and the shapes that flow between them: what each layer gives
//! for its input, the tensors it learns, and its PyTorch module.

use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::groupnorm::{GroupNormShape, check_shape};
use crate::ops::spatial::{ImageShape, Window};
use crate::{Error, Result};

/// One image, stored channels-last (height, width, channels); with one channel that is also
/// PyTorch's (channels, height, width) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// Channels at each position.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Image {
    /// A `channels`×`height`×`width` image, or an error where it holds more values than the
    /// 2^32 a kernel can index (so `positions` and `values` cannot overflow).
    pub fn new(channels: usize, height: usize, width: usize) -> Result<Self> {
        let values = [height, width]
            .into_iter()
            .try_fold(channels, usize::checked_mul)
            .filter(|&values| values <= u32::MAX as usize);
        if values.is_none() {
            return Err(Error::Limit(format!(
                "{channels}×{height}×{width} images hold more than the 2^32 values a kernel can \
                 index"
            )));
        }
        Ok(Self {
            channels,
            height,
            width,
        })
    }

    /// `images` of these.
    pub fn batch(self, images: usize) -> ImageShape {
        ImageShape {
            images,
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }

    /// Positions of the image (height·width).
    pub fn positions(self) -> usize {
        self.height * self.width
    }

    /// Values of the image.
    pub fn values(self) -> usize {
        self.positions() * self.channels
    }
}

/// What one sample is as it enters a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleShape {
    /// A vector of features.
    Flat(usize),
    /// An image.
    Image(Image),
}

impl SampleShape {
    /// Values per sample.
    pub fn len(self) -> usize {
        match self {
            SampleShape::Flat(features) => features,
            SampleShape::Image(image) => image.values(),
        }
    }

    /// Whether a sample holds no values.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// How errors name it.
    pub(super) fn describe(self) -> String {
        match self {
            SampleShape::Flat(features) => format!("{features} features"),
            SampleShape::Image(i) => format!("{}×{}×{} images", i.channels, i.height, i.width),
        }
    }
}

/// One layer of a `Sequential`. Its input's shape comes from the layers before it
/// (`ModelSpec::shapes`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerSpec {
    /// A fully connected layer on flat features.
    Linear {
        /// Output features.
        outputs: usize,
    },
    /// A 2-D convolution with bias.
    Conv2d {
        /// Output channels.
        outputs: usize,
        /// Its kernel, stride and zero padding.
        window: Window,
    },
    /// BatchNorm1d on flat features, BatchNorm2d (per channel over every position) on images.
    BatchNorm,
    /// LayerNorm: per sample over all of its values, with a scale and shift per feature
    /// (channel). PyTorch's `nn.LayerNorm` on features and `nn.GroupNorm(1, C)` on images.
    LayerNorm,
    /// GroupNorm: per sample and group of neighbouring channels (`nn.GroupNorm`).
    GroupNorm {
        /// Groups of channels; it divides the channels.
        groups: usize,
    },
    /// InstanceNorm: per sample and channel over its positions, on images
    /// (`nn.InstanceNorm2d(C, affine=True)`).
    InstanceNorm,
    /// max(x, 0).
    Relu,
    /// Inverted dropout.
    Dropout {
        /// Probability of dropping each value.
        p: f32,
    },
    /// The maximum of each window, per channel (no padding).
    MaxPool2d {
        /// Its kernel and stride.
        window: Window,
    },
    /// The mean of each channel over the whole image, giving a 1×1 image
    /// (`nn.AdaptiveAvgPool2d(1)`).
    AvgPool,
    /// An image to flat features in PyTorch's (channels, height, width) order.
    Flatten,
}

impl LayerSpec {
    /// What the layer gives for `input`, or why it cannot take it.
    pub fn output(&self, input: SampleShape) -> Result<SampleShape> {
        let image = |what: &str| match input {
            SampleShape::Image(image) => Ok(image),
            SampleShape::Flat(_) => Err(Error::Shape(format!(
                "{what} needs images, but receives {} (no convolution or pooling after a \
                 flatten or a Linear)",
                input.describe()
            ))),
        };
        Ok(match *self {
            LayerSpec::Linear { outputs } => match input {
                SampleShape::Flat(_) => SampleShape::Flat(outputs),
                SampleShape::Image(_) => {
                    return Err(Error::Shape(format!(
                        "a Linear layer needs flat features, but receives {}: put flatten \
                         before it",
                        input.describe()
                    )));
                }
            },
            LayerSpec::Conv2d { outputs, window } => {
                let image = image("a convolution")?;
                let (height, width) = window.output(image.height, image.width)?;
                SampleShape::Image(Image::new(outputs, height, width)?)
            }
            LayerSpec::MaxPool2d { window } => {
                let image = image("max pooling")?;
                let (height, width) = window.output(image.height, image.width)?;
                SampleShape::Image(Image::new(image.channels, height, width)?)
            }
            LayerSpec::AvgPool => SampleShape::Image(Image {
                height: 1,
                width: 1,
                ..image("average pooling")?
            }),
            LayerSpec::Flatten => SampleShape::Flat(image("flatten")?.values()),
            LayerSpec::LayerNorm | LayerSpec::GroupNorm { .. } | LayerSpec::InstanceNorm => {
                if *self == LayerSpec::InstanceNorm {
                    image("InstanceNorm")?;
                }
                if let Some(shape) = self.groupnorm_shape(1, input) {
                    check_shape(shape)?;
                }
                input
            }
            LayerSpec::BatchNorm | LayerSpec::Relu | LayerSpec::Dropout { .. } => input,
        })
    }

    /// Whether it is a normalization with per-sample statistics (LayerNorm, GroupNorm or
    /// InstanceNorm), which keeps no running statistics.
    pub fn is_groupnorm(&self) -> bool {
        matches!(
            self,
            LayerSpec::LayerNorm | LayerSpec::GroupNorm { .. } | LayerSpec::InstanceNorm
        )
    }

    /// Whether it is a normalization: BatchNorm or one of `is_groupnorm`'s, each learning a
    /// scale γ and shift β per feature (channel).
    pub fn is_normalization(&self) -> bool {
        *self == LayerSpec::BatchNorm || self.is_groupnorm()
    }

    /// The GroupNorm shape of `samples` samples of `input`, if it is one of those
    /// normalizations.
    pub fn groupnorm_shape(&self, samples: usize, input: SampleShape) -> Option<GroupNormShape> {
        let (positions, channels) = match input {
            SampleShape::Flat(features) => (1, features),
            SampleShape::Image(image) => (image.positions(), image.channels),
        };
        let groups = match *self {
            LayerSpec::LayerNorm => 1,
            LayerSpec::GroupNorm { groups } => groups,
            LayerSpec::InstanceNorm => channels,
            _ => return None,
        };
        Some(GroupNormShape::new(samples, positions, channels, groups))
    }

    /// The shapes of its weight and bias for `input`, PyTorch's, if it learns any.
    pub(super) fn param_shapes(&self, input: SampleShape) -> Option<[Vec<usize>; 2]> {
        match (*self, input) {
            (LayerSpec::Linear { outputs }, _) => Some([vec![outputs, input.len()], vec![outputs]]),
            (LayerSpec::Conv2d { outputs, window }, SampleShape::Image(image)) => Some([
                vec![outputs, image.channels, window.kernel, window.kernel],
                vec![outputs],
            ]),
            (layer, _) if layer.is_normalization() => {
                let features = batchnorm_features(input);
                Some([vec![features], vec![features]])
            }
            _ => None,
        }
    }

    /// The PyTorch module of this layer for `input`.
    pub(super) fn torch(&self, input: SampleShape, config: BatchNormConfig) -> String {
        match *self {
            LayerSpec::Linear { outputs } => format!("nn.Linear({}, {outputs})", input.len()),
            LayerSpec::Conv2d { outputs, window } => {
                let channels = match input {
                    SampleShape::Image(image) => image.channels,
                    SampleShape::Flat(_) => 0,
                };
                let mut text = format!("nn.Conv2d({channels}, {outputs}, {}", window.kernel);
                if window.stride != 1 {
                    text.push_str(&format!(", stride={}", window.stride));
                }
                if window.padding != 0 {
                    text.push_str(&format!(", padding={}", window.padding));
                }
                text + ")"
            }
            LayerSpec::BatchNorm => {
                let dims = match input {
                    SampleShape::Flat(_) => "1d",
                    SampleShape::Image(_) => "2d",
                };
                let features = batchnorm_features(input);
                let default = BatchNormConfig::default();
                if (config.eps(), config.momentum()) == (default.eps(), default.momentum()) {
                    format!("nn.BatchNorm{dims}({features})")
                } else {
                    format!(
                        "nn.BatchNorm{dims}({features}, eps={}, momentum={})",
                        config.eps(),
                        config.momentum()
                    )
                }
            }
            LayerSpec::LayerNorm => match input {
                SampleShape::Flat(features) => format!("nn.LayerNorm({features})"),
                SampleShape::Image(image) => format!("nn.GroupNorm(1, {})", image.channels),
            },
            LayerSpec::GroupNorm { groups } => {
                format!("nn.GroupNorm({groups}, {})", batchnorm_features(input))
            }
            LayerSpec::InstanceNorm => format!(
                "nn.InstanceNorm2d({}, affine=True)",
                batchnorm_features(input)
            ),
            LayerSpec::Relu => "nn.ReLU()".to_string(),
            LayerSpec::Dropout { p } => format!("nn.Dropout({p})"),
            LayerSpec::MaxPool2d { window } => {
                format!("nn.MaxPool2d({}, stride={})", window.kernel, window.stride)
            }
            LayerSpec::AvgPool => "nn.AdaptiveAvgPool2d(1)".to_string(),
            LayerSpec::Flatten => "nn.Flatten()".to_string(),
        }
    }
}

/// Features a BatchNorm (or a LayerNorm, GroupNorm, InstanceNorm) scales and shifts: each flat
/// feature, or each channel of an image.
pub(super) fn batchnorm_features(input: SampleShape) -> usize {
    match input {
        SampleShape::Flat(features) => features,
        SampleShape::Image(image) => image.channels,
    }
}
