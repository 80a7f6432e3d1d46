//! The catalogue of WGSL code: each shader file, each kernel (entry point) with its file, and
//! each binding slot with its WGSL name, declared once. `tests/shaders.rs` checks every entry
//! against the WGSL with naga.

use crate::{Dtype, Error, Result};

use super::GpuBuffer;

/// Threads per workgroup of the reduction and elementwise kernels (`WORKGROUP` in
/// `shaders/prelude.wgsl`; a test checks that they agree).
pub const WORKGROUP: u32 = 256;

/// Threads per workgroup of the per-channel kernels that finish a reduction
/// (`FINALIZE_WORKGROUP` in `shaders/prelude.wgsl`).
pub const FINALIZE_WORKGROUP: u32 = 64;

/// What every shader file shares (constants and the folded thread index); placed ahead of each.
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// Declares an enum whose variants each carry fixed data, with `ALL` and one accessor per
/// datum, so a list is written once.
macro_rules! catalogue {
    (
        $(#[$meta:meta])*
        $name:ident { $($field:ident: $ty:ty),* }
        $($variant:ident $(= $number:literal)? => ($($value:expr),*)),* $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant $(= $number)?),*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            catalogue!(@fields $name [$($field: $ty),*] [$($variant ($($value),*)),*]);
        }
    };
    (@fields $name:ident [] $variants:tt) => {};
    (@fields $name:ident [$field:ident: $ty:ty $(, $rest:ident: $rest_ty:ty)*]
        [$($variant:ident ($first:expr $(, $others:expr)*)),*]) => {
        #[allow(missing_docs)]
        pub fn $field(self) -> $ty {
            match self {
                $($name::$variant => $first),*
            }
        }
        catalogue!(@fields $name [$($rest: $rest_ty),*] [$($variant ($($others),*)),*]);
    };
}

catalogue! {
    /// One WGSL file per kernel family, compiled into the binary.
    Shader { file_name: &'static str, source: &'static str }
    BatchNorm => ("batchnorm.wgsl", include_str!("../../shaders/batchnorm.wgsl")),
    ChannelAffine => ("channel_affine.wgsl", include_str!("../../shaders/channel_affine.wgsl")),
    Matmul => ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
    Activation => ("activation.wgsl", include_str!("../../shaders/activation.wgsl")),
    Loss => ("loss.wgsl", include_str!("../../shaders/loss.wgsl")),
    Optimizer => ("optimizer.wgsl", include_str!("../../shaders/optimizer.wgsl")),
    Data => ("data.wgsl", include_str!("../../shaders/data.wgsl")),
    Spatial => ("spatial.wgsl", include_str!("../../shaders/spatial.wgsl")),
    Bandwidth => ("bandwidth.wgsl", include_str!("../../shaders/bandwidth.wgsl")),
    SumSquares => ("sum_squares.wgsl", include_str!("../../shaders/sum_squares.wgsl")),
}

catalogue! {
    /// An entry point of a shader.
    Kernel { shader: Shader, entry_point: &'static str }
    BatchNormStatsPartial => (Shader::BatchNorm, "stats_partial"),
    BatchNormStatsFinalize => (Shader::BatchNorm, "stats_finalize"),
    BatchNormEvalStats => (Shader::BatchNorm, "eval_stats"),
    BatchNormNormalize => (Shader::BatchNorm, "normalize"),
    BatchNormBackwardPartial => (Shader::BatchNorm, "backward_partial"),
    BatchNormBackwardFused => (Shader::BatchNorm, "backward_fused"),
    BatchNormBackwardFinalize => (Shader::BatchNorm, "backward_finalize"),
    BatchNormBackwardDx => (Shader::BatchNorm, "backward_dx"),
    ChannelAffine => (Shader::ChannelAffine, "apply"),
    ChannelAffineGradsPartial => (Shader::ChannelAffine, "grads_partial"),
    ChannelAffineGradsFinalize => (Shader::ChannelAffine, "grads_finalize"),
    Matmul => (Shader::Matmul, "matmul"),
    MatmulVec4 => (Shader::Matmul, "matmul_vec4"),
    MatmulTiled => (Shader::Matmul, "matmul_tiled"),
    MatmulReduceSplits => (Shader::Matmul, "matmul_reduce_splits"),
    ActivationForward => (Shader::Activation, "forward"),
    ActivationBackward => (Shader::Activation, "backward"),
    SoftmaxCrossEntropy => (Shader::Loss, "softmax_cross_entropy"),
    Argmax => (Shader::Loss, "argmax"),
    Adam => (Shader::Optimizer, "adam"),
    Sgd => (Shader::Optimizer, "sgd"),
    Gather => (Shader::Data, "gather"),
    Im2col => (Shader::Spatial, "im2col"),
    Col2im => (Shader::Spatial, "col2im"),
    MaxPool => (Shader::Spatial, "max_pool"),
    MaxPoolBackward => (Shader::Spatial, "max_pool_backward"),
    AvgPool => (Shader::Spatial, "avg_pool"),
    AvgPoolBackward => (Shader::Spatial, "avg_pool_backward"),
    Transpose => (Shader::Spatial, "transpose"),
    Stream => (Shader::Bandwidth, "stream"),
    SumSquares => (Shader::SumSquares, "sum_squares"),
}

catalogue! {
    /// Binding slots of group 0, named as the WGSL globals they feed, one numbering across all
    /// shaders (a test checks each name and number against every shader). Slot 0 is always the
    /// kernel's uniform parameters.
    Slot { wgsl_name: &'static str }
    X = 1 => ("x"),
    Dy = 2 => ("dy"),
    Partials = 3 => ("partials"),
    Stats = 4 => ("stats"),
    RunningMean = 5 => ("running_mean"),
    RunningVar = 6 => ("running_var"),
    Gamma = 7 => ("gamma"),
    Beta = 8 => ("beta"),
    Out = 9 => ("out"),
    Dgamma = 10 => ("dgamma"),
    Dbeta = 11 => ("dbeta"),
    MatA = 12 => ("a"),
    MatB = 13 => ("b"),
    Bias = 14 => ("bias"),
    Labels = 15 => ("labels"),
    Metrics = 16 => ("metrics"),
    Param = 17 => ("param"),
    Grad = 18 => ("grad"),
    Moment1 = 19 => ("moment1"),
    Moment2 = 20 => ("moment2"),
    Images = 21 => ("images"),
    Index = 22 => ("index"),
    ByteScale = 23 => ("byte_scale"),
    AllLabels = 24 => ("all_labels"),
    MatA4 = 25 => ("a4"),
    MatB4 = 26 => ("b4"),
    RowSums = 27 => ("row_sums"),
    Activated = 28 => ("activated"),
    PoolTaps = 29 => ("pool_taps"),
    Addend = 30 => ("addend"),
}

impl Kernel {
    /// `file.entry_point`, as profiles name it: `matmul.matmul_vec4`.
    pub fn qualified_name(self) -> String {
        let file = self.shader().file_name();
        format!("{}.{}", file.trim_end_matches(".wgsl"), self.entry_point())
    }
}

impl Shader {
    /// The module wgnorm compiles: the storage type of each typed binding (`X_T`, `DY_T`,
    /// `OUT_T`, `A_T`, `B_T`, `ADDEND_T`) defined as f32 or f16, with their vectors (`X_V`, ...
    /// and `F_V` for f32) of the pipeline's width, then the prelude, then the file. One source serves
    /// every combination.
    pub fn module_source(self, storage: Storage) -> String {
        let mut header = String::new();
        if storage.dtypes.contains(&Dtype::F16) {
            header.push_str("enable f16;\n");
        }
        let vector = |scalar: &str| match storage.vector {
            VectorWidth::One => scalar.to_string(),
            VectorWidth::Four => format!("vec4<{scalar}>"),
        };
        for ((_, alias), dtype) in TYPED_SLOTS.iter().zip(storage.dtypes) {
            let ty = match dtype {
                Dtype::F32 => "f32",
                Dtype::F16 => "f16",
            };
            header.push_str(&format!("alias {alias} = {ty};\n"));
            header.push_str(&format!(
                "alias {} = {};\n",
                vector_alias(alias),
                vector(alias)
            ));
        }
        header.push_str(&format!("alias F_V = {};\n", vector("f32")));
        header.push_str(&format!(
            "const VECTOR: u32 = {}u;\n",
            storage.vector.lanes()
        ));
        // Builds an F_V from four lane values (a vector of one keeps the first), so a kernel can
        // load per-channel values for either width.
        header.push_str(&format!(
            "fn from_lanes(v: vec4<f32>) -> F_V {{ return {}; }}\n",
            match storage.vector {
                VectorWidth::One => "v.x",
                VectorWidth::Four => "v",
            }
        ));
        format!("{header}{PRELUDE}{}", self.source())
    }

    /// Whether the file declares bindings with the aliases of `TYPED_SLOTS` (or their
    /// vectors), so that they can hold f16; the others take f32 only. Read from the source, so
    /// it cannot drift from it.
    pub fn has_f16_variant(self) -> bool {
        let source = self.source();
        TYPED_SLOTS.iter().any(|(_, alias)| {
            source.contains(&format!("array<{alias}>"))
                || source.contains(&format!("array<{}>", vector_alias(alias)))
        })
    }
}

/// The alias of the vectors of a typed binding's scalar: `X_T` → `X_V`.
fn vector_alias(alias: &str) -> String {
    format!("{}_V", alias.trim_end_matches("_T"))
}

/// Lanes of the `*_V` vector types a pipeline is built with: kernels that stream memory load
/// four values at a time where the tensor's layout allows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VectorWidth {
    #[default]
    One,
    Four,
}

impl VectorWidth {
    /// Values per vector.
    pub fn lanes(self) -> usize {
        match self {
            VectorWidth::One => 1,
            VectorWidth::Four => 4,
        }
    }
}

/// A buffer range bound to a slot, in values of the buffer's dtype.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub slot: Slot,
    pub buffer: &'a GpuBuffer,
    pub offset: usize,
    pub len: usize,
}

impl<'a> Binding<'a> {
    pub fn whole(slot: Slot, buffer: &'a GpuBuffer) -> Self {
        Self {
            slot,
            buffer,
            offset: 0,
            len: buffer.len(),
        }
    }

    /// `len` values starting at value `offset` (the byte offset must meet the adapter's
    /// storage offset alignment).
    pub fn rows(slot: Slot, buffer: &'a GpuBuffer, offset: usize, len: usize) -> Self {
        Self {
            slot,
            buffer,
            offset,
            len,
        }
    }
}

/// Bindings whose storage type each pipeline chooses, with the WGSL alias that names it: the
/// activations and gradients (x and the activated output saved beside it, dy, out), the
/// matmul operands (a, b and their vec4 views) and the addend an activation sums with x (an
/// alias of its own, so that x and the addend may be stored differently). Slots that share an
/// alias take buffers of one dtype. Every other binding is f32.
pub const TYPED_SLOTS: [(&[Slot], &str); 6] = [
    (&[Slot::X, Slot::Activated], "X_T"),
    (&[Slot::Dy], "DY_T"),
    (&[Slot::Out], "OUT_T"),
    (&[Slot::MatA, Slot::MatA4], "A_T"),
    (&[Slot::MatB, Slot::MatB4], "B_T"),
    (&[Slot::Addend], "ADDEND_T"),
];

/// The storage type of each of `TYPED_SLOTS` and the vector width, as one pipeline is built
/// for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Storage {
    pub dtypes: [Dtype; TYPED_SLOTS.len()],
    pub vector: VectorWidth,
}

impl Storage {
    /// Every typed binding stored as `dtype`, scalar vectors.
    pub fn all(dtype: Dtype) -> Self {
        Self {
            dtypes: [dtype; TYPED_SLOTS.len()],
            vector: VectorWidth::One,
        }
    }

    /// The storage of the buffers in `bindings`, refusing an f16 buffer where `shader` has no
    /// f16 variant or in an untyped slot.
    pub fn of(kernel: Kernel, bindings: &[Binding], vector: VectorWidth) -> Result<Self> {
        let mut storage = Self {
            vector,
            ..Self::default()
        };
        let mut bound: [Option<Dtype>; TYPED_SLOTS.len()] = [None; TYPED_SLOTS.len()];
        for binding in bindings {
            let dtype = binding.buffer.dtype();
            let typed = TYPED_SLOTS
                .iter()
                .position(|(slots, _)| slots.contains(&binding.slot));
            match typed {
                Some(index) if bound[index].is_some_and(|other| other != dtype) => {
                    return Err(Error::InvalidArgument(format!(
                        "{} takes one dtype for {}, got {:?} and {dtype:?}",
                        kernel.entry_point(),
                        TYPED_SLOTS[index].1,
                        bound[index].unwrap_or(dtype),
                    )));
                }
                Some(index) if kernel.shader().has_f16_variant() => {
                    storage.dtypes[index] = dtype;
                    bound[index] = Some(dtype);
                }
                _ if dtype == Dtype::F32 => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{} cannot take a {dtype:?} buffer as {}",
                        kernel.entry_point(),
                        binding.slot.wgsl_name()
                    )));
                }
            }
        }
        Ok(storage)
    }
}
