//! Launches `shaders/optimizer.wgsl`: one thread per vector of four parameters where the
//! tensor's length is a multiple of four, else per parameter.

use super::{OptimizerOps, OptimizerParams};
use crate::Result;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot, Variant, VectorWidth, WORKGROUP};

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
        let vector = if (p.len as usize).is_multiple_of(VectorWidth::Four.lanes()) {
            VectorWidth::Four
        } else {
            VectorWidth::One
        };
        let vectors = p.len as usize / vector.lanes();
        let params = OptimizerParams {
            len: vectors as u32,
            ..*p
        };
        self.record(|recording| {
            self.dispatch_threads(
                recording,
                kernel,
                Variant {
                    vector,
                    ..Variant::default()
                },
                WORKGROUP,
                &params,
                &bindings,
                vectors,
            )
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
