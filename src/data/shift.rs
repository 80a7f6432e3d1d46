//! A shift of the images' intensities between training and test data, for measuring how a
//! model's normalization copes with it: brightness adds a constant to every pixel, contrast
//! scales every pixel, both on the [0, 1] scale the models see, clamped to it and rounded back
//! to bytes.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// How the pixels x ∈ [0, 1] change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shift {
    /// x + d.
    Brightness(f32),
    /// f·x.
    Contrast(f32),
}

impl Shift {
    /// How `--shift` is written.
    pub const GRAMMAR: &str = "brightness:D (add D in [-1, 1] to every pixel in [0, 1]) or \
                               contrast:F (scale every pixel by F in [0, 10])";

    /// The shifted pixels, in place.
    pub fn apply(self, pixels: &mut [u8]) {
        for pixel in pixels {
            let x = f32::from(*pixel) / 255.0;
            let shifted = match self {
                Shift::Brightness(d) => x + d,
                Shift::Contrast(f) => f * x,
            };
            *pixel = (shifted.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
}

impl FromStr for Shift {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let parsed = text.split_once(':').and_then(|(kind, amount)| {
            let amount = amount.parse::<f32>().ok().filter(|a| a.is_finite())?;
            match kind {
                "brightness" if (-1.0..=1.0).contains(&amount) => Some(Shift::Brightness(amount)),
                "contrast" if (0.0..=10.0).contains(&amount) => Some(Shift::Contrast(amount)),
                _ => None,
            }
        });
        parsed.ok_or_else(|| {
            Error::InvalidArgument(format!("--shift `{text}`: expected {}", Self::GRAMMAR))
        })
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shift::Brightness(d) => write!(f, "brightness:{d}"),
            Shift::Contrast(c) => write!(f, "contrast:{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_clamp_to_the_pixel_range_and_parse_their_bounds() -> Result<()> {
        let mut pixels = [0, 51, 255];
        "brightness:0.2".parse::<Shift>()?.apply(&mut pixels);
        assert_eq!(pixels, [51, 102, 255]);
        "contrast:0.5".parse::<Shift>()?.apply(&mut pixels);
        assert_eq!(pixels, [26, 51, 128]);
        for bad in [
            "brightness:2",
            "contrast:-1",
            "blur:1",
            "brightness",
            "contrast:nan",
        ] {
            let err = bad.parse::<Shift>().unwrap_err().to_string();
            assert!(err.contains("expected brightness:D"), "{err}");
        }
        Ok(())
    }
}
