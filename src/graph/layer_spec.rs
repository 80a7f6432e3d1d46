//! The shapes that flow between layers: a sample is flat features or a channels-last image.

use crate::ops::spatial::ImageShape;
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
    pub(crate) fn describe(self) -> String {
        match self {
            SampleShape::Flat(features) => format!("{features} features"),
            SampleShape::Image(i) => format!("{}×{}×{} images", i.channels, i.height, i.width),
        }
    }
}

/// The image `what` needs, or why `input` is none.
pub(crate) fn image_input(what: &str, input: SampleShape) -> Result<Image> {
    match input {
        SampleShape::Image(image) => Ok(image),
        SampleShape::Flat(_) => Err(Error::Shape(format!(
            "{what} needs images, but receives {} (no convolution or pooling after a flatten \
             or a Linear)",
            input.describe()
        ))),
    }
}
