//! Launches `shaders/spatial.wgsl`: one thread per output value (im2col: per k×k of them).

use super::{ImageShape, SpatialOps, Window};
use crate::Result;
use crate::gpu::{Binding, Constants, GpuBackend, GpuBuffer, Kernel, Slot, Variant, WORKGROUP};

/// Uniform parameters of `shaders/spatial.wgsl` (`struct SpatialParams` there).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SpatialParams {
    pub len: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub out_height: u32,
    pub out_width: u32,
    pub kernel: u32,
    pub stride: u32,
    pub padding: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

const _: () = assert!(std::mem::size_of::<SpatialParams>() == 48);

impl SpatialParams {
    /// `len` outputs of an op over the images of `shape`.
    fn image(len: usize, shape: ImageShape) -> Self {
        Self {
            len: len as u32,
            channels: shape.channels as u32,
            height: shape.height as u32,
            width: shape.width as u32,
            ..Self::default()
        }
    }

    /// `len` outputs of a window over `shape` (the op has checked that it fits, within the u32
    /// positions these fields hold).
    fn window(len: usize, shape: ImageShape, window: Window) -> Self {
        let (out_height, out_width) = window.output(shape.height, shape.width).unwrap_or((0, 0));
        Self {
            out_height: out_height as u32,
            out_width: out_width as u32,
            kernel: window.kernel as u32,
            stride: window.stride as u32,
            padding: window.padding as u32,
            ..Self::image(len, shape)
        }
    }
}

impl GpuBackend {
    /// `threads` threads over `params.len` output values.
    #[allow(clippy::too_many_arguments)]
    fn spatial(
        &self,
        kernel: Kernel,
        constants: Constants,
        params: SpatialParams,
        threads: usize,
        inputs: &[Binding],
        out: &mut GpuBuffer,
    ) -> Result<()> {
        for input in inputs {
            self.check_bindable(kernel.entry_point(), input.buffer)?;
        }
        self.check_bindable(kernel.entry_point(), out)?;
        let mut bindings = inputs.to_vec();
        bindings.push(Binding::whole(Slot::Out, out));
        let variant = Variant {
            constants,
            ..Variant::default()
        };
        self.record(|recording| {
            self.dispatch_threads(
                recording, kernel, variant, WORKGROUP, &params, &bindings, threads,
            )
        })
    }
}

impl SpatialOps for GpuBackend {
    fn im2col_unchecked(
        &self,
        x: &GpuBuffer,
        shape: ImageShape,
        window: Window,
        cols: &mut GpuBuffer,
    ) -> Result<()> {
        let params = SpatialParams::window(cols.len(), shape, window);
        let inputs = [Binding::whole(Slot::X, x)];
        let threads = cols.len() / (window.kernel * window.kernel);
        self.spatial(Kernel::Im2col, &[], params, threads, &inputs, cols)
    }

    fn col2im_unchecked(
        &self,
        dcols: &GpuBuffer,
        shape: ImageShape,
        window: Window,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = SpatialParams::window(dx.len(), shape, window);
        let inputs = [Binding::whole(Slot::Dy, dcols)];
        self.spatial(Kernel::Col2im, &[], params, dx.len(), &inputs, dx)
    }

    fn max_pool_forward_unchecked(
        &self,
        x: &GpuBuffer,
        shape: ImageShape,
        window: Window,
        y: &mut GpuBuffer,
        taps: Option<&mut GpuBuffer>,
    ) -> Result<()> {
        let params = SpatialParams::window(y.len(), shape, window);
        let save_taps = [("SAVE_TAPS", f64::from(u8::from(taps.is_some())))];
        let taps = taps.map_or(self.writable_placeholder(), |taps| &*taps);
        self.check_bindable("max_pool", taps)?;
        let inputs = [
            Binding::whole(Slot::X, x),
            Binding::whole(Slot::PoolTaps, taps),
        ];
        self.spatial(Kernel::MaxPool, &save_taps, params, y.len(), &inputs, y)
    }

    fn max_pool_backward_unchecked(
        &self,
        taps: &GpuBuffer,
        dy: &GpuBuffer,
        shape: ImageShape,
        window: Window,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = SpatialParams::window(dx.len(), shape, window);
        let inputs = [
            Binding::whole(Slot::PoolTaps, taps),
            Binding::whole(Slot::Dy, dy),
        ];
        let per_thread = self.tuning().pool_channels_per_thread.min(shape.channels);
        let threads = shape.images * shape.positions() * shape.channels.div_ceil(per_thread);
        let constants = [("CHANNELS_PER_THREAD", per_thread as f64)];
        self.spatial(
            Kernel::MaxPoolBackward,
            &constants,
            params,
            threads,
            &inputs,
            dx,
        )
    }

    fn avg_pool_forward_unchecked(
        &self,
        x: &GpuBuffer,
        shape: ImageShape,
        y: &mut GpuBuffer,
    ) -> Result<()> {
        let params = SpatialParams::image(y.len(), shape);
        let inputs = [Binding::whole(Slot::X, x)];
        self.spatial(Kernel::AvgPool, &[], params, y.len(), &inputs, y)
    }

    fn avg_pool_backward_unchecked(
        &self,
        dy: &GpuBuffer,
        shape: ImageShape,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = SpatialParams::image(dx.len(), shape);
        let inputs = [Binding::whole(Slot::Dy, dy)];
        self.spatial(Kernel::AvgPoolBackward, &[], params, dx.len(), &inputs, dx)
    }

    fn transpose_unchecked(
        &self,
        x: &GpuBuffer,
        _batches: usize,
        rows: usize,
        cols: usize,
        y: &mut GpuBuffer,
    ) -> Result<()> {
        let params = SpatialParams {
            len: y.len() as u32,
            height: rows as u32,
            width: cols as u32,
            ..SpatialParams::default()
        };
        let inputs = [Binding::whole(Slot::X, x)];
        self.spatial(Kernel::Transpose, &[], params, y.len(), &inputs, y)
    }
}
