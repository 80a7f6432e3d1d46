//! `wgnorm devices`: every adapter, best first, as `wgnorm` would rank them, and what
//! `--device auto` would run on.

use wgnorm::Result;
use wgnorm::gpu::device;

pub fn run() -> Result<()> {
    let adapters = device::adapters(&device::instance());
    if adapters.is_empty() {
        return Err(device::no_adapter());
    }
    for (rank, adapter) in adapters.iter().enumerate() {
        let summary = device::AdapterSummary::of(adapter);
        let limits = adapter.limits();
        let software = if device::is_software(summary.device_type) {
            "; software, runs on the CPU"
        } else {
            ""
        };
        println!(
            "{rank}: {summary}; max storage binding {} MiB{software}",
            limits.max_storage_buffer_binding_size >> 20
        );
    }
    match device::auto_choice(&adapters) {
        device::AutoChoice::Gpu => println!("--device auto: 0, the best hardware GPU"),
        device::AutoChoice::Cpu(why) => println!("--device auto: cpu ({why})"),
    }
    Ok(())
}
