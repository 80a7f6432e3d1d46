//! Reading and writing the data wgnorm works on.

#[cfg(feature = "download")]
pub mod download;
pub mod mnist;
#[cfg(feature = "cli")]
pub mod npy;
pub mod shift;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `path` atomically: `fill` writes a temporary file beside it, which is synced and
/// renamed into place only when complete. On any failure the temporary file is removed and
/// whatever `path` held before is untouched.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let temporary = temporary_path(path);
    let result = (|| {
        let mut file = BufWriter::new(File::create(&temporary)?);
        fill(&mut file)?;
        file.flush()?;
        file.get_ref().sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}
