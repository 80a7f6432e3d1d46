//! Fetches a dataset's IDX files once, from a public mirror, verifying the SHA-256 of their
//! uncompressed data (the same whichever way a mirror compressed them). A failed or corrupt
//! download never stays on disk: data streams into a temporary file that is renamed into place
//! only after its digest matches.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::mnist::{Dataset, MnistFile};
use crate::{Error, Result};

/// Public mirrors of a dataset's `.gz` files, tried in order.
pub fn mirrors(dataset: Dataset) -> &'static [&'static str] {
    match dataset {
        Dataset::Mnist => &[
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "https://storage.googleapis.com/cvdf-datasets/mnist",
        ],
        Dataset::FashionMnist => &[
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        ],
    }
}

/// Downloads every file of `dataset` missing from `dir` (under none of its names).
pub fn ensure(dataset: Dataset, dir: &Path, mirrors: &[String]) -> Result<()> {
    let missing: Vec<MnistFile> = MnistFile::ALL
        .into_iter()
        .filter(|f| f.find(dir).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for file in missing {
        let mut reasons = Vec::new();
        let fetched = mirrors.iter().any(|mirror| {
            let url = format!("{}/{}", mirror.trim_end_matches('/'), file.gz_name());
            let sha256 = dataset.idx_sha256(file);
            match fetch_verified(&url, &dir.join(file.gz_name()), sha256) {
                Ok(()) => true,
                Err(e) => {
                    reasons.push(e.to_string());
                    false
                }
            }
        });
        if !fetched {
            return Err(Error::Download(format!(
                "{} could not be fetched ({}); put the four {} files in {} by hand",
                file.gz_name(),
                reasons.join("; "),
                dataset.name(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Streams the gzipped file at `url` into `target`, checking the SHA-256 of the data it
/// decompresses to, with a progress bar.
pub fn fetch_verified(url: &str, target: &Path, sha256: &str) -> Result<()> {
    let partial = target.with_extension("gz.part");
    let result = fetch_into(url, &partial, sha256).and_then(|()| {
        std::fs::rename(&partial, target).map_err(|source| Error::Io {
            path: target.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn fetch_into(url: &str, partial: &Path, sha256: &str) -> Result<()> {
    let failed = |message: String| Error::Download(format!("{url}: {message}"));
    let mut response = ureq::get(url).call().map_err(|e| failed(e.to_string()))?;
    let length = response.body().content_length();
    let bar =
        indicatif::ProgressBar::with_draw_target(length, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    let mut reader = response.body_mut().as_reader();
    let io = |source| Error::Io {
        path: partial.to_path_buf(),
        source,
    };
    let mut out = std::fs::File::create(partial).map_err(io)?;
    let mut unzipped = flate2::write::GzDecoder::new(HashWriter(Sha256::new()));
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            break;
        }
        unzipped
            .write_all(&chunk[..n])
            .map_err(|e| failed(format!("not a gzip file: {e}; the file was deleted")))?;
        out.write_all(&chunk[..n]).map_err(io)?;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(io)?;
    bar.finish_and_clear();
    let hasher = unzipped
        .finish()
        .map_err(|e| failed(format!("not a whole gzip file: {e}; the file was deleted")))?
        .0;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != sha256 {
        return Err(failed(format!(
            "SHA-256 of the data {digest} does not match the expected {sha256}; the file was \
             deleted"
        )));
    }
    Ok(())
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
