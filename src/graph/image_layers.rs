//! The layers on images, each forward beside its backward: the convolution (im2col, then the
//! Linear's product), max and global average pooling, and the flatten to PyTorch's order.

use super::Compute;
use super::layer_spec::Image;
use super::layers::{Linear, LinearGrads, LinearSaved};
use crate::backend::Backend;
use crate::ops::spatial::{ImageShape, Window};
use crate::{Dtype, Result};

/// y = im2col(x)·Wᵀ + b: a 2-D convolution over channels-last images, the Linear product
/// over each output position's patch.
pub struct Conv2d<B: Backend> {
    /// The product over patches: its weight is [outputs, channels·k²], PyTorch's
    /// [outputs, channels, k, k] read row-major.
    pub linear: Linear<B>,
    pub(super) input: Image,
    pub(super) window: Window,
}

/// The input (the layer before may need its own output) and its patches, for dW.
pub struct Conv2dSaved<B: Backend> {
    input: B::Buffer,
    cols: LinearSaved<B>,
}

impl<B: Compute> Conv2d<B> {
    /// The batch's images and its output positions (the product's rows).
    fn dims(&self, rows: usize) -> Result<(ImageShape, usize)> {
        let shape = self.input.batch(rows);
        Ok((shape, self.window.output_shape(shape, 1)?.numel()))
    }

    /// The convolution of `x`, stored as `output`.
    pub(super) fn forward(
        &self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
        output: Dtype,
    ) -> Result<(B::Buffer, Conv2dSaved<B>)> {
        let (shape, positions) = self.dims(rows)?;
        let patch = self.linear.inputs;
        let mut cols = backend.scratch_as(positions * patch, backend.dtype_of(&x))?;
        backend.im2col(&x, shape, self.window, &mut cols)?;
        let (y, cols) = self.linear.forward(backend, cols, positions, output)?;
        Ok((y, Conv2dSaved { input: x, cols }))
    }

    /// dW and db from the patches into `grads`, and dx = col2im(dy·W) unless the input is the
    /// data; hands back the saved input.
    pub(super) fn backward(
        &self,
        backend: &B,
        saved: Conv2dSaved<B>,
        dy: &B::Buffer,
        rows: usize,
        grads: &mut LinearGrads<B>,
        want_dx: bool,
    ) -> Result<(Option<B::Buffer>, B::Buffer)> {
        let (shape, positions) = self.dims(rows)?;
        self.linear
            .weight_grads(backend, &saved.cols.input, dy, positions, grads)?;
        if !want_dx {
            return Ok((None, saved.input));
        }
        // The patches' buffer is free once dW is recorded: dcols reuses its size.
        drop(saved.cols);
        let dcols = self.linear.input_grad(backend, dy, positions)?;
        let mut dx = backend.scratch(shape.numel())?;
        backend.col2im(&dcols, shape, self.window, &mut dx)?;
        Ok((Some(dx), saved.input))
    }
}

/// The maximum of each window, per channel.
#[derive(Clone, Copy)]
pub struct MaxPool2d {
    pub(super) input: Image,
    pub(super) window: Window,
}

/// The input, whose window maxima route dy.
pub struct MaxPoolSaved<B: Backend> {
    input: B::Buffer,
}

impl MaxPool2d {
    pub(super) fn forward<B: Compute>(
        &self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
    ) -> Result<(B::Buffer, MaxPoolSaved<B>)> {
        let shape = self.input.batch(rows);
        let out = self.window.output_shape(shape, shape.channels)?;
        let mut y = backend.scratch_as(out.numel(), backend.dtype_of(&x))?;
        backend.max_pool_forward(&x, shape, self.window, &mut y)?;
        Ok((y, MaxPoolSaved { input: x }))
    }

    /// dx, and the saved input handed back (the layer before may need its own output).
    pub(super) fn backward<B: Compute>(
        &self,
        backend: &B,
        saved: MaxPoolSaved<B>,
        dy: &B::Buffer,
        rows: usize,
    ) -> Result<(B::Buffer, B::Buffer)> {
        let shape = self.input.batch(rows);
        let mut dx = backend.scratch(shape.numel())?;
        backend.max_pool_backward(&saved.input, dy, shape, self.window, &mut dx)?;
        Ok((dx, saved.input))
    }
}

/// The mean of each channel over the whole image.
pub(super) fn avg_pool_forward<B: Compute>(
    backend: &B,
    input: Image,
    x: &B::Buffer,
    rows: usize,
) -> Result<B::Buffer> {
    let mut y = backend.scratch_as(rows * input.channels, backend.dtype_of(x))?;
    backend.avg_pool_forward(x, input.batch(rows), &mut y)?;
    Ok(y)
}

pub(super) fn avg_pool_backward<B: Compute>(
    backend: &B,
    input: Image,
    dy: &B::Buffer,
    rows: usize,
) -> Result<B::Buffer> {
    let shape = input.batch(rows);
    let mut dx = backend.scratch(shape.numel())?;
    backend.avg_pool_backward(dy, shape, &mut dx)?;
    Ok(dx)
}

/// Whether flattening `input` leaves the values where they are: channels-last and PyTorch's
/// order agree for one channel or one position.
pub(super) fn flatten_is_identity(input: Image) -> bool {
    input.channels == 1 || input.positions() == 1
}

/// Channels-last images to PyTorch's (c, h, w) order; dy back with `backward`.
pub(super) fn flatten<B: Compute>(
    backend: &B,
    input: Image,
    x: B::Buffer,
    rows: usize,
    backward: bool,
) -> Result<B::Buffer> {
    if flatten_is_identity(input) {
        return Ok(x);
    }
    let (positions, channels) = (input.positions(), input.channels);
    let (from_rows, from_cols) = if backward {
        (channels, positions)
    } else {
        (positions, channels)
    };
    let dtype = if backward {
        Dtype::F32
    } else {
        backend.dtype_of(&x)
    };
    let mut y = backend.scratch_as(backend.len_of(&x), dtype)?;
    backend.transpose(&x, rows, from_rows, from_cols, &mut y)?;
    Ok(y)
}
