//! Launches `shaders/loss.wgsl`: for the loss one workgroup walks every row, so no two threads
//! ever add to the metrics at once; argmax takes one thread per row.

use super::LossOps;
use crate::Result;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};

/// Uniform parameters of `shaders/loss.wgsl` (`struct LossParams` there); argmax reads rows
/// and classes.
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossParams {
    pub rows: u32,
    pub classes: u32,
    pub grad_scale: f32,
    pub write_grad: u32,
}

const _: () = assert!(std::mem::size_of::<LossParams>() == 16);

impl LossOps for GpuBackend {
    fn softmax_cross_entropy_unchecked(
        &self,
        logits: &GpuBuffer,
        labels: &GpuBuffer,
        classes: usize,
        mean_over: usize,
        dlogits: Option<&mut GpuBuffer>,
        metrics: &mut GpuBuffer,
    ) -> Result<()> {
        self.check_bindable("cross-entropy logits", logits)?;
        let rows = labels.len();
        let params = LossParams {
            rows: rows as u32,
            classes: classes as u32,
            grad_scale: 1.0 / mean_over as f32,
            write_grad: dlogits.is_some() as u32,
        };
        // Without a gradient the output slot still needs a buffer, which is never written.
        let out = match dlogits {
            Some(d) => &*d,
            None => self.placeholder(),
        };
        let bindings = [
            Binding::whole(Slot::X, logits),
            Binding::whole(Slot::Labels, labels),
            Binding::whole(Slot::Out, out),
            Binding::whole(Slot::Metrics, metrics),
        ];
        self.record(|recording| {
            self.dispatch(
                recording,
                Kernel::SoftmaxCrossEntropy,
                &params,
                &bindings,
                [1, 1, 1],
            )
        })
    }

    fn argmax_unchecked(
        &self,
        logits: &GpuBuffer,
        classes: usize,
        predicted: &mut GpuBuffer,
    ) -> Result<()> {
        self.check_bindable("argmax logits", logits)?;
        let rows = predicted.len();
        let params = LossParams {
            rows: rows as u32,
            classes: classes as u32,
            ..LossParams::default()
        };
        let bindings = [
            Binding::whole(Slot::X, logits),
            Binding::whole(Slot::Out, predicted),
        ];
        self.record(|recording| {
            self.dispatch_elementwise(recording, Kernel::Argmax, &params, &bindings, rows)
        })
    }
}
