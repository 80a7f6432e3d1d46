//! The one error type of wgnorm. Every message is a single line that names what went wrong.

use std::path::PathBuf;

/// Everything that can fail in wgnorm, from a bad flag to a lost GPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter fits the request; the message says what exists and how to get one.
    #[error("{0}")]
    NoAdapter(String),
    /// A wgpu validation or out-of-memory error, or a failed readback. wgpu's messages span
    /// several lines; they are shown on one.
    #[error("GPU error: {}", one_line(.0))]
    Gpu(String),
    /// The device was lost (driver reset, GPU removed); the context cannot be used again.
    #[error("GPU device lost: {}", one_line(.0))]
    DeviceLost(String),
    /// A request beyond what the adapter allows, refused before any dispatch.
    #[error("{0}")]
    Limit(String),
    /// Tensors whose shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A download that failed or whose content did not verify; nothing partial is kept.
    #[error("download failed: {0}")]
    Download(String),
    /// Training produced a non-finite loss.
    #[error("{0}")]
    Diverged(String),
    /// A data-parallel group that cannot go on: a rank failed or left, or the ranks disagree.
    #[error("{0}")]
    Distributed(String),
    /// What failed on one rank of a data-parallel group, known to every rank
    /// (`distributed::agree`), so that all stop alike.
    #[error("rank {rank}: {source}")]
    Rank {
        /// The first rank that failed.
        rank: usize,
        /// Its error.
        source: Box<Error>,
    },
    /// The user pressed Ctrl-C; what was finished has been saved.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A value that could not be written as JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A file that was read but whose content is not what it should be.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Everything fallible in wgnorm returns this.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A multi-line message (wgpu's "Validation Error / Caused by: / In ... / ...") on one line:
/// its non-empty lines, trimmed, joined by ": ", without the "Caused by:" headings.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .map(|line| line.trim_end_matches(':'))
        .filter(|line| !line.is_empty() && *line != "Caused by")
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_wgpu_message_is_shown_on_one_line() {
        let wgpu = "Validation Error\n\nCaused by:\n  In a CommandEncoder::copy_buffer_to_buffer\n    \
                    Copy source buffer is missing usage COPY_SRC\n";
        assert_eq!(
            Error::Gpu(wgpu.to_string()).to_string(),
            "GPU error: Validation Error: In a CommandEncoder::copy_buffer_to_buffer: Copy source \
             buffer is missing usage COPY_SRC"
        );
    }
}
