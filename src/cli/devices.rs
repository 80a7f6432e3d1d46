//! `wgnorm devices`: every adapter, best first, as `wgnorm` would rank them.

use wgnorm::gpu::device;
use wgnorm::{Error, Result};

pub fn run() -> Result<()> {
    let adapters = device::adapters(&device::instance());
    if adapters.is_empty() {
        return Err(Error::NoAdapter(device::NO_ADAPTER_HELP.to_string()));
    }
    for (rank, adapter) in adapters.iter().enumerate() {
        let summary = device::AdapterSummary::of(adapter);
        let limits = adapter.limits();
        println!(
            "{rank}: {summary}; max storage binding {} MiB",
            limits.max_storage_buffer_binding_size >> 20
        );
    }
    Ok(())
}
