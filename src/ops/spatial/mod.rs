//! What moves values across the positions of images: the gathers a convolution is built from,
//! pooling, and the change of layout a `Flatten` makes. Images are stored channels-last,
//! (images, height, width, channels), so a convolution is one matrix product over every output
//! position of the batch and BatchNorm2d is BatchNorm over those positions' rows.
//!
//! ```text
//! im2col:   cols[(n, oy, ox), (c, ky, kx)] = x[n, oy·s + ky − p, ox·s + kx − p, c]   (0 outside)
//! col2im:   dx[n, y, x, c] = Σ dcols[(n, oy, ox), (c, ky, kx)] over y = oy·s + ky − p, x = …
//! max pool: y[n, oy, ox, c] = max of the k×k window, taps[n, oy, ox, c] = the tap ky·k + kx of
//!           its first maximum (row-major order, as PyTorch picks it); dx adds dy there
//! avg pool: y[n, c] = mean over every position (global);  dx[n, y, x, c] = dy[n, c] / (h·w)
//! transpose: y[b, j, i] = x[b, i, j]   (Flatten: (n, h·w, c) to PyTorch's (n, c, h·w) order)
//! ```
//!
//! The column order (c, ky, kx) is that of PyTorch's `Conv2d` weight [out, in, k, k], so the
//! convolution is `im2col` then the Linear product with that weight read as [out, in·k·k]. The
//! WGSL is `shaders/spatial.wgsl`.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::SpatialParams;

use crate::backend::Backend;
use crate::ops::{check_len, check_u32_indexable};
use crate::{Error, Result};

/// A batch of images stored channels-last: (images, height, width, channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Images in the batch.
    pub images: usize,
    /// Rows of each image.
    pub height: usize,
    /// Columns of each image.
    pub width: usize,
    /// Channels at each position.
    pub channels: usize,
}

impl ImageShape {
    /// Values in the batch.
    pub fn numel(&self) -> usize {
        self.images * self.positions() * self.channels
    }

    /// Positions of one image (height·width).
    pub fn positions(&self) -> usize {
        self.height * self.width
    }

    /// `numel`, or an error where it overflows: what the ops check a shape they are given by.
    pub fn checked_numel(&self) -> Result<usize> {
        [self.height, self.width, self.channels]
            .into_iter()
            .try_fold(self.images, usize::checked_mul)
            .ok_or_else(|| {
                Error::Limit(format!(
                    "{} images of {}×{}×{} (height, width, channels) hold more values than \
                     memory can address",
                    self.images, self.height, self.width, self.channels
                ))
            })
    }
}

/// A square sliding window: kernel×kernel, moved `stride` positions at a time over the image
/// padded with `padding` zeros on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// Side of the window.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on each side.
    pub padding: usize,
}

impl Window {
    /// Output (height, width) over an image of `height`×`width`, or an error naming why the
    /// window does not fit. The kernels compute positions in u32, up to the padded extent plus
    /// one stride: a window whose padded image passes that is refused.
    pub fn output(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        if self.kernel == 0 || self.stride == 0 {
            return Err(Error::InvalidArgument(format!(
                "a window needs a positive kernel and stride, got kernel {} stride {}",
                self.kernel, self.stride
            )));
        }
        let padded = |extent: usize| {
            (self.padding.checked_mul(2))
                .and_then(|both_sides| extent.checked_add(both_sides))
                .filter(|padded| {
                    (padded.checked_add(self.stride)).is_some_and(|end| end <= u32::MAX as usize)
                })
                .ok_or_else(|| {
                    Error::Limit(format!(
                        "a {k}×{k} window with stride {s} and padding {p} over a {height}×{width} \
                         image passes the 2^32 positions a kernel can index",
                        k = self.kernel,
                        s = self.stride,
                        p = self.padding
                    ))
                })
        };
        let side = |padded: usize| {
            (padded >= self.kernel).then(|| (padded - self.kernel) / self.stride + 1)
        };
        match (side(padded(height)?), side(padded(width)?)) {
            (Some(h), Some(w)) => Ok((h, w)),
            _ => Err(Error::Shape(format!(
                "a {k}×{k} window (padding {p}) does not fit a {height}×{width} image",
                k = self.kernel,
                p = self.padding
            ))),
        }
    }

    /// The images this window's outputs form over `input`, or an error where they would hold
    /// more values than memory can address.
    pub fn output_shape(&self, input: ImageShape, channels: usize) -> Result<ImageShape> {
        let (height, width) = self.output(input.height, input.width)?;
        let output = ImageShape {
            height,
            width,
            channels,
            ..input
        };
        output.checked_numel()?;
        Ok(output)
    }

    /// Values per row of `im2col`'s output: channels·kernel².
    pub fn patch_len(&self, channels: usize) -> usize {
        channels * self.kernel * self.kernel
    }
}

/// The checks every spatial op shares: each buffer its expected length, and every length
/// indexable by a kernel.
fn check_lens(op: &str, buffers: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, got, expected) in buffers {
        check_len(&format!("{op} {name}"), got, expected)?;
        check_u32_indexable(&format!("{op} {name}"), expected)?;
    }
    Ok(())
}

/// Values of `im2col`'s output over `shape`: one row of channels·kernel² per output position,
/// or an error where that overflows.
fn cols_len(shape: ImageShape, window: Window) -> Result<usize> {
    let rows = window.output_shape(shape, 1)?.numel();
    [shape.channels, window.kernel, window.kernel]
        .into_iter()
        .try_fold(rows, usize::checked_mul)
        .ok_or_else(|| {
            Error::Limit(format!(
                "the patches of a {k}×{k} window over {} images of {}×{}×{} hold more values than \
                 memory can address",
                shape.images,
                shape.height,
                shape.width,
                shape.channels,
                k = window.kernel
            ))
        })
}

/// Values of the global average pool over `shape`: one per image and channel.
fn pooled(shape: ImageShape) -> Result<usize> {
    ImageShape {
        height: 1,
        width: 1,
        ..shape
    }
    .checked_numel()
}

/// Max pooling takes windows inside the image: PyTorch pads with −∞, which no kernel here needs.
fn check_pool_window(window: Window) -> Result<()> {
    if window.padding != 0 {
        return Err(Error::InvalidArgument(format!(
            "max pooling takes no padding, got {}",
            window.padding
        )));
    }
    Ok(())
}

/// The spatial ops. Outputs go into caller-owned buffers of the lengths the shapes give.
pub trait SpatialOps: Backend + Sized {
    /// cols = im2col(x): one row of channels·kernel² values per output position.
    fn im2col(
        &self,
        x: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        cols: &mut Self::Buffer,
    ) -> Result<()> {
        check_lens(
            "im2col",
            &[
                ("x", self.len_of(x), shape.checked_numel()?),
                ("cols", self.len_of(cols), cols_len(shape, window)?),
            ],
        )?;
        self.im2col_unchecked(x, shape, window, cols)
    }

    /// dx = col2im(dcols): each input value's gradient, summed over the patches that hold it.
    fn col2im(
        &self,
        dcols: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        check_lens(
            "col2im",
            &[
                ("dcols", self.len_of(dcols), cols_len(shape, window)?),
                ("dx", self.len_of(dx), shape.checked_numel()?),
            ],
        )?;
        self.col2im_unchecked(dcols, shape, window, dx)
    }

    /// y = the maximum of each window, per channel, and in `taps` (one value per value of y)
    /// where each first maximum was: its window tap ky·k + kx, which the backward routes dy
    /// to. Inference passes `None`.
    fn max_pool_forward(
        &self,
        x: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        y: &mut Self::Buffer,
        taps: Option<&mut Self::Buffer>,
    ) -> Result<()> {
        check_pool_window(window)?;
        let out = window.output_shape(shape, shape.channels)?.numel();
        let taps_len = taps.as_ref().map_or(out, |taps| self.len_of(taps));
        check_lens(
            "max pool",
            &[
                ("x", self.len_of(x), shape.checked_numel()?),
                ("y", self.len_of(y), out),
                ("taps", taps_len, out),
            ],
        )?;
        self.max_pool_forward_unchecked(x, shape, window, y, taps)
    }

    /// dx from dy and the taps of the training forward: each window's dy to its first maximum.
    fn max_pool_backward(
        &self,
        taps: &Self::Buffer,
        dy: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        check_pool_window(window)?;
        let out = window.output_shape(shape, shape.channels)?;
        check_lens(
            "max pool backward",
            &[
                ("taps", self.len_of(taps), out.numel()),
                ("dy", self.len_of(dy), out.numel()),
                ("dx", self.len_of(dx), shape.checked_numel()?),
            ],
        )?;
        self.max_pool_backward_unchecked(taps, dy, shape, window, dx)
    }

    /// y[n, c] = the mean of channel c over every position of image n.
    fn avg_pool_forward(
        &self,
        x: &Self::Buffer,
        shape: ImageShape,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        check_lens(
            "average pool",
            &[
                ("x", self.len_of(x), shape.checked_numel()?),
                ("y", self.len_of(y), pooled(shape)?),
            ],
        )?;
        self.avg_pool_forward_unchecked(x, shape, y)
    }

    /// dx[n, y, x, c] = dy[n, c] / positions.
    fn avg_pool_backward(
        &self,
        dy: &Self::Buffer,
        shape: ImageShape,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        check_lens(
            "average pool backward",
            &[
                ("dy", self.len_of(dy), pooled(shape)?),
                ("dx", self.len_of(dx), shape.checked_numel()?),
            ],
        )?;
        self.avg_pool_backward_unchecked(dy, shape, dx)
    }

    /// y[b, j, i] = x[b, i, j] for `batches` row-major rows×cols matrices.
    fn transpose(
        &self,
        x: &Self::Buffer,
        batches: usize,
        rows: usize,
        cols: usize,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        let len = (batches.checked_mul(rows))
            .and_then(|values| values.checked_mul(cols))
            .ok_or_else(|| {
                Error::Limit(format!(
                    "transpose of {batches} matrices of {rows}×{cols} holds more values than \
                     memory can address"
                ))
            })?;
        check_lens(
            "transpose",
            &[("x", self.len_of(x), len), ("y", self.len_of(y), len)],
        )?;
        self.transpose_unchecked(x, batches, rows, cols, y)
    }

    /// `im2col` on checked arguments.
    #[doc(hidden)]
    fn im2col_unchecked(
        &self,
        x: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        cols: &mut Self::Buffer,
    ) -> Result<()>;

    /// `col2im` on checked arguments.
    #[doc(hidden)]
    fn col2im_unchecked(
        &self,
        dcols: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// `max_pool_forward` on checked arguments.
    #[doc(hidden)]
    fn max_pool_forward_unchecked(
        &self,
        x: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        y: &mut Self::Buffer,
        taps: Option<&mut Self::Buffer>,
    ) -> Result<()>;

    /// `max_pool_backward` on checked arguments.
    #[doc(hidden)]
    fn max_pool_backward_unchecked(
        &self,
        taps: &Self::Buffer,
        dy: &Self::Buffer,
        shape: ImageShape,
        window: Window,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// `avg_pool_forward` on checked arguments.
    #[doc(hidden)]
    fn avg_pool_forward_unchecked(
        &self,
        x: &Self::Buffer,
        shape: ImageShape,
        y: &mut Self::Buffer,
    ) -> Result<()>;

    /// `avg_pool_backward` on checked arguments.
    #[doc(hidden)]
    fn avg_pool_backward_unchecked(
        &self,
        dy: &Self::Buffer,
        shape: ImageShape,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// `transpose` on checked arguments.
    #[doc(hidden)]
    fn transpose_unchecked(
        &self,
        x: &Self::Buffer,
        batches: usize,
        rows: usize,
        cols: usize,
        y: &mut Self::Buffer,
    ) -> Result<()>;
}
