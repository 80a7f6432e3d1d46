//! Launches `shaders/channel_affine.wgsl`: one thread per element for the affine, one per
//! (split of rows, channel) for its gradients, then one per channel to add the splits.

use super::{GroupNormOps, GroupNormShape, affine_splits};
use crate::Result;
use crate::backend::Backend;
use crate::gpu::{Binding, FINALIZE_WORKGROUP, GpuBackend, GpuBuffer, Kernel, Slot, Variant};

/// Uniform parameters of `shaders/channel_affine.wgsl` (`struct AffineParams` there; a test
/// compares the layouts).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AffineParams {
    pub rows: u32,
    pub channels: u32,
    pub positions: u32,
    pub group_channels: u32,
    pub groups: u32,
    pub split_rows: u32,
    pub splits: u32,
    pub shifted: u32,
}

const _: () = assert!(std::mem::size_of::<AffineParams>() == 32);

impl GroupNormOps for GpuBackend {
    fn channel_affine_unchecked(
        &self,
        x: &GpuBuffer,
        channels: usize,
        gamma: &GpuBuffer,
        beta: Option<&GpuBuffer>,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let kernel = Kernel::ChannelAffine;
        self.check_bindable(kernel.entry_point(), x)?;
        let params = AffineParams {
            rows: (x.len() / channels) as u32,
            channels: channels as u32,
            shifted: u32::from(beta.is_some()),
            ..AffineParams::default()
        };
        let bindings = [
            Binding::whole(Slot::X, x),
            Binding::whole(Slot::Gamma, gamma),
            Binding::whole(Slot::Beta, beta.unwrap_or(self.placeholder())),
            Binding::whole(Slot::Out, out),
        ];
        self.record(|recording| {
            self.dispatch_elementwise(recording, kernel, &params, &bindings, x.len())
        })
    }

    fn channel_affine_grads_unchecked(
        &self,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        shape: GroupNormShape,
        stats: &GpuBuffer,
        [dgamma, dbeta]: [&mut GpuBuffer; 2],
    ) -> Result<()> {
        let partial = Kernel::ChannelAffineGradsPartial;
        for input in [x, dy] {
            self.check_bindable(partial.entry_point(), input)?;
        }
        let rows = shape.samples * shape.positions;
        let (split_rows, splits) = affine_splits(rows, shape.channels);
        let params = AffineParams {
            rows: rows as u32,
            channels: shape.channels as u32,
            positions: shape.positions as u32,
            group_channels: (shape.channels / shape.groups) as u32,
            groups: shape.groups as u32,
            split_rows: split_rows as u32,
            splits: splits as u32,
            shifted: 0,
        };
        let partials = self.scratch((splits * shape.channels * 2).max(1))?;
        let per_channel = [
            Binding::whole(Slot::Partials, &partials),
            Binding::whole(Slot::Dgamma, dgamma),
            Binding::whole(Slot::Dbeta, dbeta),
        ];
        let mut partial_bindings = vec![
            Binding::whole(Slot::X, x),
            Binding::whole(Slot::Dy, dy),
            Binding::whole(Slot::Stats, stats),
        ];
        partial_bindings.extend_from_slice(&per_channel);
        self.record(|recording| {
            self.dispatch_threads(
                recording,
                partial,
                Variant::default(),
                FINALIZE_WORKGROUP,
                &params,
                &partial_bindings,
                splits * shape.channels,
            )?;
            if splits == 1 {
                return Ok(());
            }
            self.dispatch_threads(
                recording,
                Kernel::ChannelAffineGradsFinalize,
                Variant::default(),
                FINALIZE_WORKGROUP,
                &params,
                &per_channel,
                shape.channels,
            )
        })
    }
}
