//! One interface, two backends: the GPU (wgpu compute shaders) and its CPU twin.
//!
//! Ops are written against these traits, so a program switches device by choosing a backend
//! value, not by changing code.

use crate::Result;

/// Storage of f32 tensors on one device.
pub trait Backend {
    /// A flat run of f32 values on this backend's device. Shapes travel beside it.
    type Buffer;

    /// What runs the work, for humans: the adapter name or "cpu".
    fn describe(&self) -> String;

    /// Copies host data to the device.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;

    /// Number of f32 values in `buffer`.
    fn len_of(&self, buffer: &Self::Buffer) -> usize;

    /// A buffer of `len` copies of `value`.
    fn filled(&self, len: usize, value: f32) -> Result<Self::Buffer>;

    /// A buffer of `len` values for an op to overwrite; its contents are unspecified.
    fn scratch(&self, len: usize) -> Result<Self::Buffer>;

    /// Sends the work recorded so far to the device (a no-op where work runs at once).
    fn flush(&self) -> Result<()>;

    /// Copies device data back to the host, waiting for all work recorded before.
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<f32>>;
}
