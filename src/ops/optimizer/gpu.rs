//! Launches `shaders/optimizer.wgsl`: one thread per parameter.

use super::{OptimizerOps, OptimizerParams};
use crate::Result;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};

impl GpuBackend {
    /// Dispatches one update kernel over `tensors` (name, slot, buffer).
    fn optimizer_update(
        &self,
        kernel: Kernel,
        p: &OptimizerParams,
        tensors: &[(&str, Slot, &GpuBuffer)],
    ) -> Result<()> {
        let mut bindings = Vec::with_capacity(tensors.len());
        for &(name, slot, buffer) in tensors {
            self.check_bindable(name, buffer)?;
            bindings.push(Binding::whole(slot, buffer));
        }
        self.record(|encoder| {
            self.dispatch_elementwise(encoder, kernel, p, &bindings, p.len as usize)
        })
    }
}

impl OptimizerOps for GpuBackend {
    fn adam_update_unchecked(
        &self,
        p: &OptimizerParams,
        param: &mut GpuBuffer,
        grad: &GpuBuffer,
        moment1: &mut GpuBuffer,
        moment2: &mut GpuBuffer,
    ) -> Result<()> {
        let tensors = [
            ("parameter", Slot::Param, &*param),
            ("gradient", Slot::Grad, grad),
            ("first moment", Slot::Moment1, &*moment1),
            ("second moment", Slot::Moment2, &*moment2),
        ];
        self.optimizer_update(Kernel::Adam, p, &tensors)
    }

    fn sgd_update_unchecked(
        &self,
        p: &OptimizerParams,
        param: &mut GpuBuffer,
        grad: &GpuBuffer,
        momentum: &mut GpuBuffer,
    ) -> Result<()> {
        let tensors = [
            ("parameter", Slot::Param, &*param),
            ("gradient", Slot::Grad, grad),
            ("momentum buffer", Slot::Moment1, &*momentum),
        ];
        self.optimizer_update(Kernel::Sgd, p, &tensors)
    }
}
