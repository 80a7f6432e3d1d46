//! The CPU backend: buffers are vectors and each op runs at once. Its kernels, the CPU twins of
//! the WGSL ones, live beside their GPU launchers in `src/ops/<op>/cpu.rs`.

use crate::Result;
use crate::backend::Backend;

/// The CPU backend. Its buffers are plain vectors.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;

    fn describe(&self) -> String {
        "cpu".to_string()
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn len_of(&self, buffer: &Vec<f32>) -> usize {
        buffer.len()
    }

    fn filled(&self, len: usize, value: f32) -> Result<Vec<f32>> {
        Ok(vec![value; len])
    }

    fn scratch(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn download(&self, buffer: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buffer.clone())
    }
}
