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

/// Whether an adapter of this type is a software rasterizer (lavapipe, SwiftShader, WARP): it
/// runs shaders on the host's CPU cores.
pub fn is_software(device_type: wgpu::DeviceType) -> bool {
    device_type == wgpu::DeviceType::Cpu
}

/// What the command line's `--device auto` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoChoice {
    /// The best adapter, a hardware GPU.
    Gpu,
    /// The CPU backend, and why.
    Cpu(String),
}

/// A hardware GPU if there is one, else the CPU backend: a software adapter runs on the same
/// cores as the CPU backend, through a shader compiler, and trains many times slower.
pub fn auto_choice(adapters: &[wgpu::Adapter]) -> AutoChoice {
    let kinds: Vec<(String, wgpu::DeviceType)> = adapters
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            (info.name, info.device_type)
        })
        .collect();
    auto_choice_among(&kinds)
}

/// `auto_choice` on the adapters' names and types.
pub fn auto_choice_among(adapters: &[(String, wgpu::DeviceType)]) -> AutoChoice {
    if adapters.iter().any(|(_, kind)| !is_software(*kind)) {
        return AutoChoice::Gpu;
    }
    if adapters.is_empty() {
        return AutoChoice::Cpu("no GPU adapter found".to_string());
    }
    let names: Vec<&str> = adapters.iter().map(|(name, _)| name.as_str()).collect();
    let (noun, verb, which) = match names.len() {
        1 => ("adapter", "runs", "it"),
        _ => ("adapters", "run", "the first"),
    };
    AutoChoice::Cpu(format!(
        "no hardware GPU, only the software {noun} {}, which {verb} on the CPU's own cores \
         slower than the CPU backend; --device gpu uses {which}",
        names.join(", ")
    ))
}

/// The one-line error for a machine without an adapter, with how to get one.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found: install a Vulkan, Metal or DX12 driver \
     (on Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1 for the lavapipe \
     software adapter), or use --device cpu";

/// The error for a `WGPU_BACKEND` that names no backend wgpu knows (wgpu then finds no adapter
/// and says nothing of why).
pub fn unknown_backend_env() -> Option<Error> {
    let value = std::env::var("WGPU_BACKEND").ok()?;
    wgpu::Backends::from_comma_list(&value).is_empty().then(|| {
        Error::NoAdapter(format!(
            "WGPU_BACKEND={value} names no backend: use vulkan, metal, dx12 or gl \
             (comma-separated), or unset it"
        ))
    })
}

/// The error for an instance that found no adapter: what `WGPU_BACKEND` did wrong where it is
/// set, else how to install a driver.
pub fn no_adapter() -> Error {
    if let Some(error) = unknown_backend_env() {
        return error;
    }
    match std::env::var("WGPU_BACKEND") {
        Ok(value) => Error::NoAdapter(format!(
            "{NO_ADAPTER_HELP}; WGPU_BACKEND={value} limits the search to those backends"
        )),
        Err(_) => Error::NoAdapter(NO_ADAPTER_HELP.to_string()),
    }
}

/// The best adapter matching the request.
pub fn choose(instance: &wgpu::Instance, request: &AdapterRequest) -> Result<wgpu::Adapter> {
    let all = adapters(instance);
    let Some(wanted) = &request.name else {
        return all.into_iter().next().ok_or_else(no_adapter);
    };
    if all.is_empty() {
        return Err(no_adapter());
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

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::DeviceType;

    fn kinds(list: &[(&str, DeviceType)]) -> Vec<(String, DeviceType)> {
        list.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    }

    #[test]
    fn auto_takes_a_hardware_gpu_else_the_cpu() {
        let hardware = kinds(&[
            ("NVIDIA H200", DeviceType::DiscreteGpu),
            ("llvmpipe", DeviceType::Cpu),
        ]);
        assert_eq!(auto_choice_among(&hardware), AutoChoice::Gpu);
        let integrated = kinds(&[("Intel UHD", DeviceType::IntegratedGpu)]);
        assert_eq!(auto_choice_among(&integrated), AutoChoice::Gpu);
        let AutoChoice::Cpu(why) = auto_choice_among(&kinds(&[("llvmpipe", DeviceType::Cpu)]))
        else {
            panic!("a software adapter alone must not be chosen");
        };
        assert!(why.contains("only the software adapter llvmpipe"), "{why}");
        assert!(why.contains("--device gpu uses it"), "{why}");
        let AutoChoice::Cpu(why) = auto_choice_among(&kinds(&[
            ("llvmpipe", DeviceType::Cpu),
            ("SwiftShader Device", DeviceType::Cpu),
        ])) else {
            panic!("software adapters alone must not be chosen");
        };
        assert!(
            why.contains("adapters llvmpipe, SwiftShader Device"),
            "{why}"
        );
        assert_eq!(
            auto_choice_among(&[]),
            AutoChoice::Cpu("no GPU adapter found".to_string())
        );
    }
}
