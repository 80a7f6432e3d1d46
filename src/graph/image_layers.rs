//! The layers on images, each forward beside its backward: the convolution (im2col, then the
//! Linear's product), max and global average pooling, and the flatten to PyTorch's order.

use super::Compute;
use super::layer_spec::Image;
use super::layers::{Linear, LinearGrads};
use crate::backend::Backend;
use crate::ops::batchnorm::Mode;
use crate::ops::chunks::{RowBytes, RowChunk, plan_chunks};
use crate::ops::matmul::Store;
use crate::ops::spatial::Window;
use crate::{Dtype, Error, Result};

/// y = im2col(x)·Wᵀ + b: a 2-D convolution over channels-last images, the Linear product
/// over each output position's patch. Where a batch's patches pass the backend's binding
/// limit, the images go through in chunks whose patches fit, and the backward makes each
/// chunk's patches again.
pub struct Conv2d<B: Backend> {
    /// The product over patches: its weight is [outputs, channels·k²], PyTorch's
    /// [outputs, channels, k, k] read row-major.
    pub linear: Linear<B>,
    pub(super) input: Image,
    pub(super) window: Window,
}

/// The input (the layer before may need its own output) and, where the batch went through in
/// one chunk, its patches, for dW.
pub struct Conv2dSaved<B: Backend> {
    input: B::Buffer,
    cols: Option<B::Buffer>,
}

impl<B: Compute> Conv2d<B> {
    /// Output positions of one image (the product's rows per image).
    fn positions(&self) -> Result<usize> {
        Ok(self.window.output_shape(self.input.batch(1), 1)?.numel())
    }

    /// The images of each pass: the whole batch, or where its patches pass the binding limit,
    /// chunks whose patches fit and whose views of x, y, dy and dx start aligned. The plan
    /// is the same for every dtype: offsets aligned for f16 values are for f32 ones too.
    fn chunks(&self, backend: &B, rows: usize) -> Result<Vec<RowChunk>> {
        let whole = vec![RowChunk { first_row: 0, rows }];
        let Some(max_binding) = backend.max_binding_bytes() else {
            return Ok(whole);
        };
        let positions = self.positions()?;
        let smallest = Dtype::F16.size();
        let viewed = [self.input.values(), positions * self.linear.outputs]
            .map(|values| (values * smallest) as u64);
        plan_chunks(
            "a convolution's patches",
            rows,
            RowBytes {
                // dcols, f32 whatever the activations are stored as.
                largest: (positions * self.linear.inputs * Dtype::F32.size()) as u64,
                viewed: &viewed,
            },
            max_binding,
            backend.view_alignment(),
        )
    }

    /// The patches of `images` images in `x`, and their number.
    fn patches(&self, backend: &B, x: &B::Buffer, images: usize) -> Result<(B::Buffer, usize)> {
        let shape = self.input.batch(images);
        let positions = self.window.output_shape(shape, 1)?.numel();
        let mut cols = backend.scratch_as(positions * self.linear.inputs, backend.dtype_of(x))?;
        backend.im2col(x, shape, self.window, &mut cols)?;
        Ok((cols, positions))
    }

    /// The convolution of `x`, stored as `output`.
    pub(super) fn forward(
        &self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
        output: Dtype,
    ) -> Result<(B::Buffer, Conv2dSaved<B>)> {
        let chunks = self.chunks(backend, rows)?;
        let out_per_image = self.positions()? * self.linear.outputs;
        let mut y = backend.scratch_as(rows * out_per_image, output)?;
        if let [_] = chunks[..] {
            let (cols, positions) = self.patches(backend, &x, rows)?;
            self.linear
                .forward_into(backend, &cols, positions, &mut y)?;
            let saved = Conv2dSaved {
                input: x,
                cols: Some(cols),
            };
            return Ok((y, saved));
        }
        for chunk in chunks {
            let x_part = part(backend, &x, chunk, self.input.values())?;
            let (cols, positions) = self.patches(backend, &x_part, chunk.rows)?;
            let mut y_part = part(backend, &y, chunk, out_per_image)?;
            self.linear
                .forward_into(backend, &cols, positions, &mut y_part)?;
        }
        Ok((
            y,
            Conv2dSaved {
                input: x,
                cols: None,
            },
        ))
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
        let in_per_image = self.input.values();
        let mut dx = match want_dx {
            true => Some(backend.scratch(rows * in_per_image)?),
            false => None,
        };
        if let Some(cols) = saved.cols {
            let parts = ChunkGrads {
                dy,
                dx: dx.as_mut(),
            };
            self.chunk_backward(backend, cols, rows, parts, grads, Store::Replace)?;
            return Ok((dx, saved.input));
        }
        let out_per_image = self.positions()? * self.linear.outputs;
        for (index, chunk) in self.chunks(backend, rows)?.into_iter().enumerate() {
            let x_part = part(backend, &saved.input, chunk, in_per_image)?;
            let (cols, _) = self.patches(backend, &x_part, chunk.rows)?;
            let dy_part = part(backend, dy, chunk, out_per_image)?;
            let mut dx_part = match &dx {
                Some(dx) => Some(part(backend, dx, chunk, in_per_image)?),
                None => None,
            };
            let parts = ChunkGrads {
                dy: &dy_part,
                dx: dx_part.as_mut(),
            };
            let store = if index == 0 {
                Store::Replace
            } else {
                Store::Add
            };
            self.chunk_backward(backend, cols, chunk.rows, parts, grads, store)?;
        }
        Ok((dx, saved.input))
    }

    /// One chunk's share of dW and db (stored or added as `store` says) and its dx.
    fn chunk_backward(
        &self,
        backend: &B,
        cols: B::Buffer,
        images: usize,
        parts: ChunkGrads<'_, B>,
        grads: &mut LinearGrads<B>,
        store: Store,
    ) -> Result<()> {
        let positions = images * self.positions()?;
        self.linear
            .weight_grads(backend, &cols, parts.dy, positions, grads, store)?;
        let Some(dx) = parts.dx else {
            return Ok(());
        };
        // The patches' buffer is free once dW is recorded: dcols reuses its size.
        drop(cols);
        let dcols = self.linear.input_grad(backend, parts.dy, positions)?;
        backend.col2im(&dcols, self.input.batch(images), self.window, dx)
    }
}

/// A chunk's dy, and where its dx goes (none where the input is the data).
struct ChunkGrads<'a, B: Backend> {
    dy: &'a B::Buffer,
    dx: Option<&'a mut B::Buffer>,
}

/// The rows of `chunk` in `buffer`, `per_row` values each, as a view.
fn part<B: Backend>(
    backend: &B,
    buffer: &B::Buffer,
    chunk: RowChunk,
    per_row: usize,
) -> Result<B::Buffer> {
    backend
        .view(buffer, chunk.first_row * per_row, chunk.rows * per_row)
        .ok_or_else(|| {
            Error::Limit(format!(
                "{} cannot bind part of a tensor, which a batch this large needs",
                backend.describe()
            ))
        })
}

/// The maximum of each window, per channel.
#[derive(Clone, Copy)]
pub struct MaxPool2d {
    pub(super) input: Image,
    pub(super) window: Window,
}

/// The input (the layer before may need its own output) and, after a training forward, where
/// each window's maximum was, which routes dy.
pub struct MaxPoolSaved<B: Backend> {
    input: B::Buffer,
    taps: Option<B::Buffer>,
}

impl MaxPool2d {
    pub(super) fn forward<B: Compute>(
        &self,
        backend: &B,
        mode: Mode,
        x: B::Buffer,
        rows: usize,
    ) -> Result<(B::Buffer, MaxPoolSaved<B>)> {
        let shape = self.input.batch(rows);
        let out = self.window.output_shape(shape, shape.channels)?.numel();
        let mut y = backend.scratch_as(out, backend.dtype_of(&x))?;
        let mut taps = match mode {
            Mode::Train => Some(backend.scratch(out)?),
            Mode::Eval => None,
        };
        backend.max_pool_forward(&x, shape, self.window, &mut y, taps.as_mut())?;
        Ok((y, MaxPoolSaved { input: x, taps }))
    }

    /// dx, and the saved input handed back (the layer before may need its own output).
    pub(super) fn backward<B: Compute>(
        &self,
        backend: &B,
        saved: MaxPoolSaved<B>,
        dy: &B::Buffer,
        rows: usize,
    ) -> Result<(B::Buffer, B::Buffer)> {
        let taps = saved.taps.ok_or_else(|| {
            Error::InvalidArgument("max pooling's backward needs a training forward".into())
        })?;
        let shape = self.input.batch(rows);
        let mut dx = backend.scratch(shape.numel())?;
        backend.max_pool_backward(&taps, dy, shape, self.window, &mut dx)?;
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
