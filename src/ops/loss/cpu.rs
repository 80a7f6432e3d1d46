//! The CPU twin of `shaders/loss.wgsl`.

use super::{LossOps, is_class_index, metric};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};

impl LossOps for CpuBackend {
    fn softmax_cross_entropy_unchecked(
        &self,
        logits: &CpuBuffer,
        labels: &CpuBuffer,
        classes: usize,
        mean_over: usize,
        mut dlogits: Option<&mut CpuBuffer>,
        metrics: &mut CpuBuffer,
    ) -> Result<()> {
        let rows = labels.len();
        let grad_scale = 1.0 / mean_over as f32;
        let (mut loss, mut correct) = (0.0f32, 0.0f32);
        let mut bad_row = None;
        for (r, (z, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
            if !is_class_index(label, classes) {
                bad_row.get_or_insert(r);
                if let Some(d) = dlogits.as_deref_mut() {
                    d[r * classes..(r + 1) * classes].fill(0.0);
                }
                continue;
            }
            let label = label as usize;
            let (best, top) = first_max(z);
            let total: f32 = z.iter().map(|&v| (v - top).exp()).sum();
            loss += total.ln() + top - z[label];
            correct += if best == label { 1.0 } else { 0.0 };
            if let Some(d) = dlogits.as_deref_mut() {
                let row = &mut d[r * classes..(r + 1) * classes];
                for (j, (d, &value)) in row.iter_mut().zip(z).enumerate() {
                    let onehot = if j == label { 1.0 } else { 0.0 };
                    *d = ((value - top).exp() / total - onehot) * grad_scale;
                }
            }
        }
        let term = loss - metrics[metric::LOSS_COMPENSATION];
        let sum = metrics[metric::LOSS] + term;
        metrics[metric::LOSS_COMPENSATION] = (sum - metrics[metric::LOSS]) - term;
        metrics[metric::LOSS] = sum;
        metrics[metric::CORRECT] += correct;
        metrics[metric::SAMPLES] += rows as f32;
        metrics[metric::CALLS] += 1.0;
        if !loss.is_finite() && metrics[metric::FIRST_NON_FINITE] == 0.0 {
            metrics[metric::FIRST_NON_FINITE] = metrics[metric::CALLS];
        }
        if let Some(row) = bad_row
            && metrics[metric::BAD_LABEL_CALL] == 0.0
        {
            metrics[metric::BAD_LABEL_CALL] = metrics[metric::CALLS];
            metrics[metric::BAD_LABEL_ROW] = row as f32;
            metrics[metric::BAD_LABEL] = labels[row];
            metrics[metric::BAD_LABEL_CLASSES] = classes as f32;
        }
        Ok(())
    }

    fn argmax_unchecked(
        &self,
        logits: &CpuBuffer,
        classes: usize,
        predicted: &mut CpuBuffer,
    ) -> Result<()> {
        for (class, z) in predicted.iter_mut().zip(logits.chunks_exact(classes)) {
            *class = first_max(z).0 as f32;
        }
        Ok(())
    }
}

/// The index and value of the first maximum of `z`, walked as the kernels walk it: a later
/// value must be strictly larger, so a tie stays with the first and a NaN never wins.
fn first_max(z: &[f32]) -> (usize, f32) {
    let (mut best, mut top) = (0, z[0]);
    for (j, &value) in z.iter().enumerate().skip(1) {
        if value > top {
            (best, top) = (j, value);
        }
    }
    (best, top)
}
