//! MNIST and Fashion-MNIST from the four standard IDX files, gzip-compressed or raw.
//!
//! The `mnist` crate panics on malformed files and reads raw files only, so wgnorm parses IDX
//! itself: every header is checked against the file's real length before anything is allocated
//! from it, and every problem is an error naming the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Image height and width in pixels.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// Digit classes.
pub const CLASSES: usize = 10;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;
/// Larger than any MNIST file uncompressed (train images: 47,040,016 bytes): a cap on gunzip.
const MAX_UNCOMPRESSED: u64 = 64 << 20;

/// The datasets of 28×28 grey images in 10 classes that come as four IDX files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dataset {
    /// Handwritten digits, by Yann LeCun, Corinna Cortes and Christopher J. C. Burges
    /// (CC BY-SA 3.0).
    #[default]
    Mnist,
    /// Zalando's clothing images ("Fashion-MNIST: a Novel Image Dataset for Benchmarking
    /// Machine Learning Algorithms", Xiao, Rasul, Vollgraf, 2017; MIT licence).
    FashionMnist,
}

impl Dataset {
    /// The name used on the command line and for its default folder: `mnist`, `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
        }
    }

    /// What each class index stands for.
    pub fn class_names(self) -> [&'static str; CLASSES] {
        match self {
            Dataset::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            Dataset::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    /// SHA-256 of a file's IDX data, uncompressed: the same however a mirror compressed it.
    pub fn idx_sha256(self, file: MnistFile) -> &'static str {
        use MnistFile::*;
        match (self, file) {
            (Dataset::Mnist, TrainImages) => {
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            }
            (Dataset::Mnist, TrainLabels) => {
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            }
            (Dataset::Mnist, TestImages) => {
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            }
            (Dataset::Mnist, TestLabels) => {
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            }
            (Dataset::FashionMnist, TrainImages) => {
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            }
            (Dataset::FashionMnist, TrainLabels) => {
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            }
            (Dataset::FashionMnist, TestImages) => {
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            }
            (Dataset::FashionMnist, TestLabels) => {
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            }
        }
    }
}

/// The four files of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistFile {
    /// train-images-idx3-ubyte: 60,000 images.
    TrainImages,
    /// train-labels-idx1-ubyte.
    TrainLabels,
    /// t10k-images-idx3-ubyte: 10,000 images.
    TestImages,
    /// t10k-labels-idx1-ubyte.
    TestLabels,
}

impl MnistFile {
    /// The four files.
    pub const ALL: [MnistFile; 4] = [
        MnistFile::TrainImages,
        MnistFile::TrainLabels,
        MnistFile::TestImages,
        MnistFile::TestLabels,
    ];

    /// Name of the uncompressed file; the compressed one adds `.gz`.
    pub fn stem(self) -> &'static str {
        match self {
            MnistFile::TrainImages => "train-images-idx3-ubyte",
            MnistFile::TrainLabels => "train-labels-idx1-ubyte",
            MnistFile::TestImages => "t10k-images-idx3-ubyte",
            MnistFile::TestLabels => "t10k-labels-idx1-ubyte",
        }
    }

    /// The compressed file's name.
    pub fn gz_name(self) -> String {
        format!("{}.gz", self.stem())
    }

    /// The names the file goes by: the standard one (`train-images-idx3-ubyte`) and the
    /// common variant with a dot (`train-images.idx3-ubyte`, as some archives ship it), each
    /// gzipped or not; gzipped first.
    pub fn names(self) -> [String; 4] {
        let stem = self.stem();
        let dotted = stem.replacen("-idx", ".idx", 1);
        [
            format!("{stem}.gz"),
            stem.to_string(),
            format!("{dotted}.gz"),
            dotted,
        ]
    }

    /// The file present in `dir` under any of its `names`.
    pub fn find(self, dir: &Path) -> Option<PathBuf> {
        self.names()
            .into_iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
    }
}

/// Images as bytes (row-major, `PIXELS` per image) and labels 0..9.
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// Row-major 28×28 bytes per image.
    pub images: Vec<u8>,
    /// One class 0–9 per image.
    pub labels: Vec<u8>,
}

impl Split {
    /// Images in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Both splits of MNIST or Fashion-MNIST.
#[derive(Clone, Debug, Default)]
pub struct Mnist {
    /// Which dataset the images are (names its classes).
    pub dataset: Dataset,
    /// The 60,000 training images.
    pub train: Split,
    /// The 10,000 test images.
    pub test: Split,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The file's bytes, gunzipped when it ends in `.gz`.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(bad(path, "the file is empty"));
    }
    if path.extension().is_none_or(|e| e != "gz") {
        return Ok(bytes);
    }
    gunzip(path, &bytes)
}

/// Gunzips the bytes of `path`, refusing output beyond what any MNIST file needs.
pub fn gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_UNCOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("truncated or corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_UNCOMPRESSED {
        return Err(bad(
            path,
            format!("decompresses to more than {MAX_UNCOMPRESSED} bytes; not an MNIST file"),
        ));
    }
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks an IDX header: magic, and that the count it announces is exactly what the file holds.
fn check_header(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    header_len: usize,
    item_len: usize,
) -> Result<usize> {
    let too_short = || {
        bad(
            path,
            format!(
                "{} bytes is too short for an IDX header of {header_len}",
                bytes.len()
            ),
        )
    };
    if bytes.len() < 4 {
        return Err(too_short());
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(bad(
            path,
            format!("wrong magic number {found}, expected {magic}"),
        ));
    }
    if bytes.len() < header_len {
        return Err(too_short());
    }
    let count = be_u32(bytes, 4) as usize;
    let body = bytes.len() - header_len;
    if count as u128 * item_len as u128 != body as u128 {
        return Err(bad(
            path,
            format!(
                "the header announces {count} items of {item_len} bytes but the file holds {body} bytes after it"
            ),
        ));
    }
    Ok(count)
}

/// Parses an IDX3 image file of 28×28 images.
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() >= 16 && be_u32(bytes, 0) == IMAGES_MAGIC {
        let (rows, cols) = (be_u32(bytes, 8), be_u32(bytes, 12));
        if (rows, cols) != (SIDE as u32, SIDE as u32) {
            return Err(bad(
                path,
                format!("images are {rows}x{cols}, expected {SIDE}x{SIDE}"),
            ));
        }
    }
    check_header(path, bytes, IMAGES_MAGIC, 16, PIXELS)?;
    Ok(bytes[16..].to_vec())
}

/// Parses an IDX1 label file with labels 0..9.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    check_header(path, bytes, LABELS_MAGIC, 8, 1)?;
    let labels = &bytes[8..];
    if let Some(i) = labels.iter().position(|&l| l as usize >= CLASSES) {
        return Err(bad(
            path,
            format!("label {} at index {i} is outside 0..9", labels[i]),
        ));
    }
    Ok(labels.to_vec())
}

fn load_file(dir: &Path, file: MnistFile) -> Result<(PathBuf, Vec<u8>)> {
    let path = file.find(dir).ok_or_else(|| Error::Io {
        path: dir.join(file.gz_name()),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not found (nor the uncompressed file)",
        ),
    })?;
    let bytes = read_bytes(&path)?;
    Ok((path, bytes))
}

fn load_split(dir: &Path, images: MnistFile, labels: MnistFile) -> Result<Split> {
    let (image_path, image_bytes) = load_file(dir, images)?;
    let images = parse_images(&image_path, &image_bytes)?;
    let (label_path, label_bytes) = load_file(dir, labels)?;
    let labels = parse_labels(&label_path, &label_bytes)?;
    if images.len() / PIXELS != labels.len() {
        return Err(bad(
            &label_path,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                images.len() / PIXELS,
                image_path.display()
            ),
        ));
    }
    Ok(Split { images, labels })
}

/// Loads all four MNIST files from `dir`.
pub fn load(dir: &Path) -> Result<Mnist> {
    load_dataset(Dataset::Mnist, dir)
}

/// Loads all four files of `dataset` from `dir`.
pub fn load_dataset(dataset: Dataset, dir: &Path) -> Result<Mnist> {
    Ok(Mnist {
        dataset,
        train: load_split(dir, MnistFile::TrainImages, MnistFile::TrainLabels)?,
        test: load_split(dir, MnistFile::TestImages, MnistFile::TestLabels)?,
    })
}
