//! `conv<C>k<K>[s<S>][p<P>]`: a 2-D convolution with bias over channels-last images
//! (`nn.Conv2d`), y = im2col(x)·Wᵀ + b, the Linear product over each output position's patch.
//! Where a batch's patches pass the backend's binding limit, the images go through in chunks
//! whose patches fit, and the backward makes each chunk's patches again.

use std::fmt;
use std::rc::Rc;

use super::linear::{LinearLayer, weight_and_bias};
use super::{
    Fused, LayerKind, Module, OnnxAttribute, OnnxNode, ParamGrads, Pass, TakeTensor, TensorDef,
    Value,
};
use crate::backend::Backend;
use crate::graph::layer_spec::{Image, SampleShape, image_input};
use crate::ops::Compute;
use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::chunks::{RowBytes, RowChunk, plan_chunks};
use crate::ops::matmul::Store;
use crate::ops::spatial::Window;
use crate::{Dtype, Error, Result};

/// A 2-D convolution with bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2d {
    /// Output channels.
    pub outputs: usize,
    /// Its kernel, stride and zero padding.
    pub window: Window,
}

impl fmt::Display for Conv2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conv{}k{}", self.outputs, self.window.kernel)?;
        if self.window.stride != 1 {
            write!(f, "s{}", self.window.stride)?;
        }
        if self.window.padding != 0 {
            write!(f, "p{}", self.window.padding)?;
        }
        Ok(())
    }
}

impl LayerKind for Conv2d {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        let image = image_input("a convolution", input)?;
        let (height, width) = self.window.output(image.height, image.width)?;
        Ok(SampleShape::Image(Image::new(self.outputs, height, width)?))
    }

    fn tensors(&self, input: SampleShape) -> Vec<TensorDef> {
        let channels = channels_of(input);
        let k = self.window.kernel;
        // Saturating: ModelSpec refuses the tensor by its size, rather than this overflow.
        let taps = k.saturating_mul(k);
        weight_and_bias(
            self.outputs,
            channels.saturating_mul(taps),
            &[channels, k, k],
            taps,
        )
    }

    fn torch(&self, input: SampleShape, _: BatchNormConfig) -> String {
        let window = self.window;
        let mut text = format!(
            "nn.Conv2d({}, {}, {}",
            channels_of(input),
            self.outputs,
            window.kernel
        );
        if window.stride != 1 {
            text.push_str(&format!(", stride={}", window.stride));
        }
        if window.padding != 0 {
            text.push_str(&format!(", padding={}", window.padding));
        }
        text + ")"
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        let (k, s, p) = (self.window.kernel, self.window.stride, self.window.padding);
        let ints =
            |values: &[usize]| OnnxAttribute::Ints(values.iter().map(|&v| v as i64).collect());
        Ok(Some(OnnxNode {
            op: "Conv",
            attributes: vec![
                ("kernel_shape", ints(&[k, k])),
                ("strides", ints(&[s, s])),
                ("pads", ints(&[p, p, p, p])),
            ],
            tensors: vec!["weight", "bias"],
        }))
    }

    fn is_weighted(&self) -> bool {
        true
    }
}

fn channels_of(input: SampleShape) -> usize {
    match input {
        SampleShape::Image(image) => image.channels,
        SampleShape::Flat(_) => 0,
    }
}

impl Conv2d {
    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        _: BatchNormConfig,
        tensors: &mut dyn TakeTensor<B>,
    ) -> Result<Conv2dLayer<B>> {
        let input = image_input("a convolution", input)?;
        let inputs = self.window.patch_len(input.channels);
        Ok(Conv2dLayer {
            linear: LinearLayer::take(tensors, inputs, self.outputs)?,
            input,
            window: self.window,
        })
    }
}

/// A convolution on a backend: the product over patches, whose weight is
/// [outputs, channels·k²], PyTorch's [outputs, channels, k, k] read row-major.
pub struct Conv2dLayer<B: Backend> {
    linear: LinearLayer<B>,
    input: Image,
    window: Window,
}

/// The input and, where the batch went through in one chunk, its patches, for dW.
pub struct Conv2dSaved<B: Backend> {
    input: Value<B>,
    cols: Option<B::Buffer>,
}

impl<B: Compute> Conv2dLayer<B> {
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

    /// One chunk's share of dW and db (stored or added as `store` says) and its dx.
    fn chunk_backward(
        &self,
        backend: &B,
        cols: B::Buffer,
        images: usize,
        parts: ChunkGrads<'_, B>,
        slots: (&mut B::Buffer, &mut B::Buffer),
        store: Store,
    ) -> Result<()> {
        let positions = images * self.positions()?;
        self.linear
            .weight_grads(backend, &cols, parts.dy, positions, slots, store)?;
        let Some(dx) = parts.dx else {
            return Ok(());
        };
        // The patches are not read again once dW is recorded. The CPU backend's pool hands
        // their vector straight to dcols, of the same size; on the GPU a dropped buffer waits
        // for the next submission (recorded work may still read it), so both are held there.
        drop(cols);
        let dcols = self.linear.input_grad(backend, parts.dy, positions)?;
        backend.col2im(&dcols, self.input.batch(images), self.window, dx)
    }
}

impl<B: Compute> Module<B> for Conv2dLayer<B> {
    type Saved = Conv2dSaved<B>;

    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        _: &Fused<B>,
    ) -> Result<(Value<B>, Conv2dSaved<B>)> {
        let (backend, rows) = (pass.backend, pass.rows);
        let chunks = self.chunks(backend, rows)?;
        let out_per_image = self.positions()? * self.linear.outputs;
        let mut y = backend.scratch_as(rows * out_per_image, pass.output)?;
        if let [_] = chunks[..] {
            let (cols, positions) = self.patches(backend, &x, rows)?;
            self.linear
                .forward_into(backend, &cols, positions, &mut y)?;
            let saved = Conv2dSaved {
                input: x,
                cols: Some(cols),
            };
            return Ok((Rc::new(y), saved));
        }
        for chunk in chunks {
            let x_part = part(backend, &x, chunk, self.input.values())?;
            let (cols, positions) = self.patches(backend, &x_part, chunk.rows)?;
            let mut y_part = part(backend, &y, chunk, out_per_image)?;
            self.linear
                .forward_into(backend, &cols, positions, &mut y_part)?;
        }
        let saved = Conv2dSaved {
            input: x,
            cols: None,
        };
        Ok((Rc::new(y), saved))
    }

    /// dW and db from the patches, and dx = col2im(dy·W) where wanted.
    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: Conv2dSaved<B>,
        dy: Value<B>,
        grads: &mut ParamGrads<B>,
        wants_dx: bool,
    ) -> Result<Option<Value<B>>> {
        let (backend, rows) = (pass.backend, pass.rows);
        let (mut weight, mut bias) = (grads.take("weight")?, grads.take("bias")?);
        let in_per_image = self.input.values();
        let mut dx = match wants_dx {
            true => Some(backend.scratch(rows * in_per_image)?),
            false => None,
        };
        if let Some(cols) = saved.cols {
            let parts = ChunkGrads {
                dy: &*dy,
                dx: dx.as_mut(),
            };
            let slots = (&mut weight, &mut bias);
            self.chunk_backward(backend, cols, rows, parts, slots, Store::Replace)?;
        } else {
            let out_per_image = self.positions()? * self.linear.outputs;
            for (index, chunk) in self.chunks(backend, rows)?.into_iter().enumerate() {
                let x_part = part(backend, &saved.input, chunk, in_per_image)?;
                let (cols, _) = self.patches(backend, &x_part, chunk.rows)?;
                let dy_part = part(backend, &dy, chunk, out_per_image)?;
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
                let slots = (&mut weight, &mut bias);
                self.chunk_backward(backend, cols, chunk.rows, parts, slots, store)?;
            }
        }
        grads.put("weight", weight);
        grads.put("bias", bias);
        Ok(dx.map(Rc::new))
    }

    fn tensors(&self) -> Vec<(&'static str, &B::Buffer)> {
        self.linear.weight_and_bias()
    }

    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
        self.linear.weight_and_bias_mut()
    }
}

/// A chunk's dy, and where its dx goes (none where the input's gradient is not wanted).
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
