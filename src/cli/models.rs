//! What a run trains, as the command line names it: a preset (`--model`), and the preset's base
//! (the MLP, the CNN or a ResNet) with the normalization `--norm` or `--norms` gives it.

use clap::ValueEnum;

use wgnorm::graph::{Norm, Preset};
use wgnorm::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelChoice {
    /// Linear → ReLU → Dropout per hidden width → Linear.
    #[value(alias = "nobn")]
    Mlp,
    /// Linear → BatchNorm1d → ReLU → Dropout per hidden width → Linear.
    #[value(alias = "bn")]
    MlpBn,
    /// [Conv 3×3 → ReLU → MaxPool 2] with 32, then 64 channels → Flatten → the MLP's head.
    Cnn,
    /// The CNN with BatchNorm2d after each convolution and BatchNorm1d in the head.
    CnnBn,
    /// ResNet-8 (CIFAR-style, 16/32/64 channels, one residual block per stage) with BatchNorm.
    Resnet8,
    /// ResNet-20: three residual blocks per stage.
    Resnet20,
    /// ResNet-56: nine residual blocks per stage.
    Resnet56,
}

impl ModelChoice {
    /// The model a run trains without --model: the MLP with BatchNorm, or the MLP with
    /// `norm` where --norm gives one.
    pub fn default_for(norm: Option<Norm>) -> Self {
        match norm {
            Some(_) => ModelChoice::Mlp,
            None => ModelChoice::MlpBn,
        }
    }

    /// The preset it names.
    pub fn preset(self) -> Preset {
        match self {
            ModelChoice::Mlp => Preset::Mlp,
            ModelChoice::MlpBn => Preset::MlpBn,
            ModelChoice::Cnn => Preset::Cnn,
            ModelChoice::CnnBn => Preset::CnnBn,
            ModelChoice::Resnet8 => Preset::ResNet8,
            ModelChoice::Resnet20 => Preset::ResNet20,
            ModelChoice::Resnet56 => Preset::ResNet56,
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        self.preset().name()
    }

    /// What a run trains: the preset, or its base (mlp, cnn or a resnet) with `norm` where
    /// given.
    pub fn with_norm(self, norm: Option<Norm>) -> Result<RunModel> {
        let preset = self.preset();
        match norm {
            None => Ok(RunModel {
                base: preset.base(),
                norm: preset.norm(),
            }),
            Some(norm) if preset.base() == preset => Ok(RunModel { base: preset, norm }),
            Some(norm) => Err(Error::InvalidArgument(format!(
                "--norm sets the normalization of --model mlp, cnn or a resnet, and --model {} \
                 has BatchNorm already (use --model {} --norm {norm})",
                preset.name(),
                preset.base().name()
            ))),
        }
    }
}

/// What one run trains: the MLP, the CNN or a ResNet with a normalization after each
/// convolution and hidden Linear (or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunModel {
    /// One of `Preset::BASES`.
    pub base: Preset,
    pub norm: Norm,
}

impl RunModel {
    /// Its name in reports and run folders: mlp, mlp-bn, resnet8 (the presets' names), mlp-ln,
    /// cnn-gn8, resnet8-none, ...
    pub fn name(self) -> String {
        self.base.name_with(self.norm)
    }
}

/// Parses a `--norm` value.
pub fn parse_norm(text: &str) -> std::result::Result<Norm, String> {
    text.parse::<Norm>().map_err(|e| e.to_string())
}
