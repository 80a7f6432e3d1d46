//! What a run trains, as the command line names it: a preset (`--model`), and the preset's base
//! with the normalization `--norm` or `--norms` gives it.

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
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        self.preset().name()
    }

    /// What a run trains: the preset, or its base (mlp or cnn) with `norm` where given.
    pub fn with_norm(self, norm: Option<Norm>) -> Result<RunModel> {
        let preset = self.preset();
        match norm {
            None => Ok(RunModel {
                base: preset.base(),
                norm: preset.norm(),
            }),
            Some(norm) if preset.norm() == Norm::None => Ok(RunModel { base: preset, norm }),
            Some(norm) => Err(Error::InvalidArgument(format!(
                "--norm sets the normalization of --model mlp or cnn, and --model {} has \
                 BatchNorm already (use --model {} --norm {norm})",
                preset.name(),
                preset.base().name()
            ))),
        }
    }
}

/// What one run trains: the MLP or the CNN with a normalization after each convolution and
/// hidden Linear (or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunModel {
    /// `Preset::Mlp` or `Preset::Cnn`.
    pub base: Preset,
    pub norm: Norm,
}

impl RunModel {
    /// Its name in reports and run folders: mlp, mlp-bn (the presets' names), mlp-ln,
    /// cnn-gn8, ...
    pub fn name(self) -> String {
        self.base.name_with(self.norm)
    }
}

/// Parses a `--norm` value.
pub fn parse_norm(text: &str) -> std::result::Result<Norm, String> {
    text.parse::<Norm>().map_err(|e| e.to_string())
}
