//! Adapters: listing them, and choosing one (a hardware GPU before a software one).

use crate::{Error, Result};

/// What `wgnorm devices` prints about an adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Vulkan, Metal, DX12 or GL.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (a software rasterizer) or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name.
    pub driver: String,
    /// Driver version and details.
    pub driver_info: String,
}

impl AdapterSummary {
    /// The summary of `adapter`.
    pub fn of(adapter: &wgpu::Adapter) -> Self {
        Self::from_info(adapter.get_info())
    }

    /// The summary of what wgpu reports about an adapter.
    pub fn from_info(info: wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver,
            driver_info: info.driver_info,
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}, driver {} {})",
            self.name, self.backend, self.device_type, self.driver, self.driver_info
        )
    }
}

/// Which adapter to use: `name` is a case-insensitive substring of the adapter name.
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// Case-insensitive substring of the adapter's name; `None` takes the best adapter.
    pub name: Option<String>,
}

impl AdapterRequest {
    /// `--adapter` if given, else the `WGNORM_ADAPTER` environment variable.
    pub fn from_flag_or_env(flag: Option<String>) -> Self {
        let name = flag.or_else(|| {
            std::env::var("WGNORM_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty())
        });
        Self { name }
    }
}

/// An instance with wgpu's own environment applied (`WGPU_BACKEND` and friends).
pub fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter the instance sees, best first.
pub fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    all.sort_by_key(|adapter| preference(adapter.get_info().device_type));
    all
}

/// Lower is better: real GPUs first, software rasterizers last.
fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The one-line error for a machine without an adapter, with how to get one.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found: install a Vulkan, Metal or DX12 driver \
     (on Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1 for the lavapipe \
     software adapter), or use --device cpu";

/// The best adapter matching the request.
pub fn choose(instance: &wgpu::Instance, request: &AdapterRequest) -> Result<wgpu::Adapter> {
    let all = adapters(instance);
    let Some(wanted) = &request.name else {
        return all
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoAdapter(NO_ADAPTER_HELP.to_string()));
    };
    if all.is_empty() {
        return Err(Error::NoAdapter(NO_ADAPTER_HELP.to_string()));
    }
    let needle = wanted.to_lowercase();
    let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
    all.into_iter()
        .find(|adapter| adapter.get_info().name.to_lowercase().contains(&needle))
        .ok_or_else(|| {
            Error::NoAdapter(format!(
                "no adapter matches '{wanted}'; available: {}",
                names.join(", ")
            ))
        })
}
