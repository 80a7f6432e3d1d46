//! Launches `shaders/sum_squares.wgsl`: one workgroup per sum.

use super::SumSquaresOps;
use crate::Result;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};

/// Uniform parameters of `shaders/sum_squares.wgsl` (`struct SumSquaresParams` there; a test
/// compares the layouts).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SumSquaresParams {
    pub len: u32,
    pub slot: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

const _: () = assert!(std::mem::size_of::<SumSquaresParams>() == 16);

impl SumSquaresOps for GpuBackend {
    fn sum_squares_unchecked(&self, x: &GpuBuffer, out: &mut GpuBuffer, slot: usize) -> Result<()> {
        let kernel = Kernel::SumSquares;
        self.check_bindable(kernel.entry_point(), x)?;
        let params = SumSquaresParams {
            len: x.len() as u32,
            slot: slot as u32,
            ..SumSquaresParams::default()
        };
        let bindings = [Binding::whole(Slot::X, x), Binding::whole(Slot::Out, out)];
        self.record(|recording| self.dispatch(recording, kernel, &params, &bindings, [1, 1, 1]))
    }
}
