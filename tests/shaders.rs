//! Every WGSL shader parses and validates with naga, and agrees with the Rust side on entry
//! points, binding slots, uniform layouts and shared constants. Needs no GPU.

use std::mem::{offset_of, size_of};

use naga::valid::{Capabilities, ValidationFlags, Validator};
use wgnorm::Dtype;
use wgnorm::bench::{STREAM_VECTORS_PER_THREAD, StreamParams};
use wgnorm::gpu::{
    FINALIZE_WORKGROUP, Kernel, Shader, Slot, Storage, TYPED_SLOTS, VectorWidth, WORKGROUP,
};
use wgnorm::ops::activation::ActivationParams;
use wgnorm::ops::batchnorm::{BatchNormParams, PARTIAL_STRIDE, stat};
use wgnorm::ops::data::GatherParams;
use wgnorm::ops::groupnorm::AffineParams;
use wgnorm::ops::loss::{LossParams, metric};
use wgnorm::ops::matmul::{
    MATMUL_ACCUMULATE, MATMUL_BIAS, MATMUL_K_STEP, MATMUL_ROW_SUMS, MATMUL_SIDE, MATMUL_TILE,
    MATMUL_VEC4_BLOCK, MatmulParams,
};
use wgnorm::ops::optimizer::OptimizerParams;
use wgnorm::ops::spatial::SpatialParams;
use wgnorm::ops::sum_squares::SumSquaresParams;

fn parse_as(shader: Shader, storage: Storage) -> naga::Module {
    let source = shader.module_source(storage);
    naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
        panic!(
            "{} ({storage:?}): {}",
            shader.file_name(),
            e.emit_to_string(&source)
        )
    })
}

fn parse(shader: Shader) -> naga::Module {
    parse_as(shader, Storage::all(Dtype::F32))
}

fn u32_constant(module: &naga::Module, name: &str) -> u32 {
    let (_, constant) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("constant {name} missing"));
    match module.global_expressions[constant.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v,
        ref other => panic!("constant {name} is not a u32 literal: {other:?}"),
    }
}

/// `dtype` everywhere, with vectors of each width.
fn storages(dtype: Dtype) -> [Storage; 2] {
    [VectorWidth::One, VectorWidth::Four].map(|vector| Storage {
        vector,
        ..Storage::all(dtype)
    })
}

/// `shader` built for `storage`, parsed and validated with `capabilities`.
fn validated(shader: Shader, storage: Storage, capabilities: Capabilities) -> naga::Module {
    let module = parse_as(shader, storage);
    Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "{} ({storage:?}): {}",
                shader.file_name(),
                e.emit_to_string(&shader.module_source(storage))
            )
        });
    module
}

#[test]
fn every_shader_validates() {
    for &shader in Shader::ALL {
        for storage in storages(Dtype::F32) {
            validated(shader, storage, Capabilities::empty());
        }
    }
}

#[test]
fn every_f16_variant_validates_with_only_the_f16_capability() {
    let with_f16: Vec<Shader> = Shader::ALL
        .iter()
        .copied()
        .filter(|s| s.has_f16_variant())
        .collect();
    assert_eq!(
        with_f16,
        [
            Shader::BatchNorm,
            Shader::ChannelAffine,
            Shader::Matmul,
            Shader::Activation,
            Shader::Spatial
        ]
    );
    for (shader, storage) in with_f16
        .into_iter()
        .flat_map(|shader| storages(Dtype::F16).map(|storage| (shader, storage)))
    {
        let module = validated(shader, storage, Capabilities::SHADER_FLOAT16);
        // Its typed bindings really are f16 and every other binding 4 bytes wide.
        let typed: Vec<&str> = TYPED_SLOTS
            .iter()
            .flat_map(|(slots, _)| slots.iter().map(|slot| slot.wgsl_name()))
            .collect();
        for (_, var) in module.global_variables.iter() {
            let Some(name) = var.name.as_deref() else {
                continue;
            };
            let naga::TypeInner::Array { base, .. } = module.types[var.ty].inner else {
                continue;
            };
            let width = match module.types[base].inner {
                naga::TypeInner::Scalar(scalar) => scalar.width,
                naga::TypeInner::Vector { scalar, .. } => scalar.width,
                _ => continue,
            };
            let want = if typed.contains(&name) { 2 } else { 4 };
            assert_eq!(width, want, "{name} of {}", shader.file_name());
        }
    }
}

/// The entry point of `kernel` in its shader.
fn entry_point(kernel: Kernel) -> naga::EntryPoint {
    parse(kernel.shader())
        .entry_points
        .into_iter()
        .find(|e| e.name == kernel.entry_point())
        .unwrap_or_else(|| panic!("{kernel:?}: no entry point {}", kernel.entry_point()))
}

#[test]
fn every_kernel_is_a_compute_entry_point_of_its_shader() {
    for &kernel in Kernel::ALL {
        let entry = entry_point(kernel);
        assert_eq!(entry.stage, naga::ShaderStage::Compute, "{kernel:?}");
    }
}

/// WebGPU's default `max_storage_buffers_per_shader_stage`: a device a host creates with
/// `wgpu::Limits::default()` (as `examples/embed_bn.rs` does) allows no more.
const DEFAULT_STORAGE_BUFFERS: usize = 8;

#[test]
fn every_kernel_fits_the_default_storage_buffer_limit() {
    for &shader in Shader::ALL {
        let module = parse(shader);
        let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
            .validate(&module)
            .unwrap();
        for (index, entry) in module.entry_points.iter().enumerate() {
            let uses = info.get_entry_point(index);
            let storage_buffers = (module.global_variables.iter())
                .filter(|(handle, global)| {
                    matches!(global.space, naga::AddressSpace::Storage { .. })
                        && !uses[*handle].is_empty()
                })
                .count();
            assert!(
                storage_buffers <= DEFAULT_STORAGE_BUFFERS,
                "{}: {} binds {storage_buffers} storage buffers",
                shader.file_name(),
                entry.name
            );
        }
    }
}

#[test]
fn binding_slots_match_the_rust_names() {
    for &shader in Shader::ALL {
        let module = parse(shader);
        for (_, global) in module.global_variables.iter() {
            let (Some(name), Some(binding)) = (&global.name, &global.binding) else {
                continue;
            };
            assert_eq!(binding.group, 0, "{name}");
            if binding.binding == 0 {
                assert!(
                    matches!(global.space, naga::AddressSpace::Uniform),
                    "slot 0 holds the uniform parameters, not {name}"
                );
                continue;
            }
            let slot = Slot::ALL
                .iter()
                .find(|s| s.wgsl_name() == name)
                .unwrap_or_else(|| panic!("{}: binding {name} has no Slot", shader.file_name()));
            assert_eq!(
                *slot as u32,
                binding.binding,
                "{}: {name}",
                shader.file_name()
            );
        }
    }
}

/// (name, offset) of each member of the WGSL struct `name`, and its size.
fn wgsl_struct(shader: Shader, name: &str) -> (Vec<(String, usize)>, usize) {
    let module = parse(shader);
    module
        .types
        .iter()
        .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
            (Some(n), naga::TypeInner::Struct { members, span }) if n == name => Some((
                members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                    .collect(),
                *span as usize,
            )),
            _ => None,
        })
        .unwrap_or_else(|| panic!("struct {name} missing from {}", shader.file_name()))
}

macro_rules! rust_layout {
    ($ty:ty: $($field:ident),*) => {
        (vec![$((stringify!($field).to_string(), offset_of!($ty, $field))),*], size_of::<$ty>())
    };
}

#[test]
fn uniform_layouts_match_rust() {
    assert_eq!(
        wgsl_struct(Shader::BatchNorm, "Params"),
        rust_layout!(BatchNormParams: rows, channels, groups, run_len, lanes_are_channels, lanes_c, split_len, split_base, total_splits, running_var_factor, count, eps, momentum, first_value, dropout_threshold, key_x, key_y, dropout_scale, ghost_batches, first_ghost, bound_ghosts, ghost_loop)
    );
    assert_eq!(
        wgsl_struct(Shader::ChannelAffine, "AffineParams"),
        rust_layout!(AffineParams: rows, channels, positions, group_channels, groups, split_rows, splits, shifted)
    );
    assert_eq!(
        wgsl_struct(Shader::Matmul, "MatmulParams"),
        rust_layout!(MatmulParams: m, n, k, a_row_stride, a_col_stride, b_row_stride, b_col_stride, flags, k_split, splits, _pad0, _pad1)
    );
    assert_eq!(
        wgsl_struct(Shader::Activation, "ActivationParams"),
        rust_layout!(ActivationParams: len, threshold, key_x, key_y, scale, relu, addend, first_element)
    );
    assert_eq!(
        wgsl_struct(Shader::Loss, "LossParams"),
        rust_layout!(LossParams: rows, classes, grad_scale, write_grad)
    );
    assert_eq!(
        wgsl_struct(Shader::Optimizer, "OptimizerParams"),
        rust_layout!(OptimizerParams: len, step_size, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2_sqrt, momentum, param_scale, weight_decay, _pad0, _pad1)
    );
    assert_eq!(
        wgsl_struct(Shader::Data, "GatherParams"),
        rust_layout!(GatherParams: rows, row_len, first, _pad0)
    );
    assert_eq!(
        wgsl_struct(Shader::Spatial, "SpatialParams"),
        rust_layout!(SpatialParams: len, channels, height, width, out_height, out_width, kernel, stride, padding, _pad0, _pad1, _pad2)
    );
    assert_eq!(
        wgsl_struct(Shader::SumSquares, "SumSquaresParams"),
        rust_layout!(SumSquaresParams: len, slot, _pad0, _pad1)
    );
    assert_eq!(
        wgsl_struct(Shader::Bandwidth, "StreamParams"),
        rust_layout!(StreamParams: len, a, b, _pad0)
    );
}

#[test]
fn stream_constants_match_rust() {
    let module = parse(Shader::Bandwidth);
    assert_eq!(
        u32_constant(&module, "VECTORS_PER_THREAD") as usize,
        STREAM_VECTORS_PER_THREAD
    );
}

#[test]
fn matmul_constants_match_rust() {
    let module = parse(Shader::Matmul);
    assert_eq!(u32_constant(&module, "TILE") as usize, MATMUL_TILE);
    assert_eq!(u32_constant(&module, "SIDE") as usize, MATMUL_SIDE);
    assert_eq!(u32_constant(&module, "K_STEP") as usize, MATMUL_K_STEP);
    assert_eq!(
        u32_constant(&module, "BLOCK") as usize,
        MATMUL_SIDE * MATMUL_TILE
    );
    assert_eq!(u32_constant(&module, "V_ROWS") as usize, MATMUL_VEC4_BLOCK);
    assert_eq!(u32_constant(&module, "V_COLS") as usize, MATMUL_VEC4_BLOCK);
    assert_eq!(u32_constant(&module, "FLAG_BIAS"), MATMUL_BIAS);
    assert_eq!(u32_constant(&module, "FLAG_ROW_SUMS"), MATMUL_ROW_SUMS);
    assert!(
        module
            .overrides
            .iter()
            .any(|(_, o)| o.name.as_deref() == Some(MATMUL_ACCUMULATE)),
        "{MATMUL_ACCUMULATE}"
    );
}

#[test]
fn batchnorm_constants_match_rust() {
    let module = parse(Shader::BatchNorm);
    assert_eq!(u32_constant(&module, "WORKGROUP"), WORKGROUP);
    assert_eq!(
        u32_constant(&module, "PARTIAL_STRIDE") as usize,
        PARTIAL_STRIDE
    );
    for (name, plane) in [
        ("STAT_MEAN", stat::MEAN),
        ("STAT_VAR", stat::VAR),
        ("STAT_INVSTD", stat::INVSTD),
        ("STAT_SHIFT", stat::SHIFT),
        ("STAT_SHIFTED_MEAN", stat::SHIFTED_MEAN),
        ("STAT_PLANES", stat::PLANES),
    ] {
        assert_eq!(u32_constant(&module, name) as usize, plane, "{name}");
    }
}

#[test]
fn channel_affine_reads_the_batchnorm_statistics_planes() {
    let module = parse(Shader::ChannelAffine);
    for (name, plane) in [
        ("STAT_INVSTD", stat::INVSTD),
        ("STAT_SHIFT", stat::SHIFT),
        ("STAT_SHIFTED_MEAN", stat::SHIFTED_MEAN),
        ("STAT_PLANES", stat::PLANES),
    ] {
        assert_eq!(u32_constant(&module, name) as usize, plane, "{name}");
    }
}

#[test]
fn the_prelude_constants_match_rust_and_size_every_kernel() {
    for &shader in Shader::ALL {
        let module = parse(shader);
        assert_eq!(u32_constant(&module, "WORKGROUP"), WORKGROUP);
        assert_eq!(
            u32_constant(&module, "FINALIZE_WORKGROUP"),
            FINALIZE_WORKGROUP
        );
    }
    // Every kernel's workgroup is one the launchers size their grids by: the prelude's two, the
    // matmul tiles, or an override the launcher sets (matmul_vec4's V_GROUP).
    let side = MATMUL_SIDE as u32;
    for &kernel in Kernel::ALL {
        let entry = entry_point(kernel);
        let size = entry.workgroup_size;
        let allowed = match kernel {
            Kernel::Matmul | Kernel::MatmulTiled => vec![[side, side, 1]],
            Kernel::MatmulVec4 => {
                assert!(entry.workgroup_size_overrides.is_some(), "V_GROUP");
                continue;
            }
            _ => vec![[WORKGROUP, 1, 1], [FINALIZE_WORKGROUP, 1, 1]],
        };
        assert!(
            allowed.contains(&size),
            "{}: {size:?}",
            kernel.entry_point()
        );
    }
    // Each constant is defined once, in the prelude.
    for &shader in Shader::ALL {
        for name in [
            "const WORKGROUP",
            "const FINALIZE_WORKGROUP",
            "fn thread_index",
        ] {
            assert!(
                !shader.source().contains(name),
                "{} redefines {name}",
                shader.file_name()
            );
        }
    }
}

#[test]
fn loss_metric_slots_match_rust() {
    let module = parse(Shader::Loss);
    for (name, slot) in [
        ("METRIC_LOSS", metric::LOSS),
        ("METRIC_LOSS_COMPENSATION", metric::LOSS_COMPENSATION),
        ("METRIC_CORRECT", metric::CORRECT),
        ("METRIC_SAMPLES", metric::SAMPLES),
        ("METRIC_CALLS", metric::CALLS),
        ("METRIC_FIRST_NON_FINITE", metric::FIRST_NON_FINITE),
        ("METRIC_BAD_LABEL_CALL", metric::BAD_LABEL_CALL),
        ("METRIC_BAD_LABEL_ROW", metric::BAD_LABEL_ROW),
        ("METRIC_BAD_LABEL", metric::BAD_LABEL),
        ("METRIC_BAD_LABEL_CLASSES", metric::BAD_LABEL_CLASSES),
    ] {
        assert_eq!(u32_constant(&module, name) as usize, slot, "{name}");
    }
    assert_eq!(metric::LEN, 10);
}

#[test]
fn argmax_reads_the_logits_and_writes_one_class_per_row() {
    let module = parse(Shader::Loss);
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap();
    let index = (module.entry_points.iter())
        .position(|e| e.name == Kernel::Argmax.entry_point())
        .unwrap();
    assert_eq!(module.entry_points[index].workgroup_size, [WORKGROUP, 1, 1]);
    let uses = info.get_entry_point(index);
    let mut bound: Vec<&str> = (module.global_variables.iter())
        .filter(|(handle, global)| global.binding.is_some() && !uses[*handle].is_empty())
        .filter_map(|(_, global)| global.name.as_deref())
        .collect();
    bound.sort_unstable();
    assert_eq!(bound, ["out", "p", "x"]);
}
