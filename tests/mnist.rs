//! MNIST loading from the real files in ../shared/data/mnist, malformed files, and the download
//! path against a local HTTP server on 127.0.0.1 (nothing leaves this machine).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

mod common;

use common::{assert_one_line_error, shared_mnist, wgnorm};
use wgnorm::data::download::{ensure, fetch_verified};
use wgnorm::data::mnist::{self, Dataset, MnistFile, PIXELS};

#[test]
fn the_real_files_load_with_the_standard_counts() {
    let Some(dir) = shared_mnist() else { return };
    let data = mnist::load(&dir).unwrap();
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!(data.train.images.len(), 60_000 * PIXELS);
    let count = |labels: &[u8], class| labels.iter().filter(|&&l| l == class).count();
    assert_eq!(
        (count(&data.train.labels, 0), count(&data.train.labels, 1)),
        (5923, 6742)
    );
    assert_eq!(
        (count(&data.test.labels, 0), count(&data.test.labels, 1)),
        (980, 1135)
    );
}

fn idx_images(count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in [2051, count, rows, cols] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.resize(16 + pixels, 7);
    bytes
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in [2049, labels.len() as u32] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.extend_from_slice(labels);
    bytes
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A data dir with two-image splits, raw files, after `spoil` has changed one of them.
/// What the library and the binary say about the files once `spoil` has changed them.
fn load_spoiled(spoil: impl FnOnce(&Path)) -> (String, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    for (images, labels) in [
        (MnistFile::TrainImages, MnistFile::TrainLabels),
        (MnistFile::TestImages, MnistFile::TestLabels),
    ] {
        std::fs::write(
            dir.path().join(images.stem()),
            idx_images(2, 28, 28, 2 * PIXELS),
        )
        .unwrap();
        std::fs::write(dir.path().join(labels.stem()), idx_labels(&[3, 9])).unwrap();
    }
    mnist::load(dir.path()).expect("the unspoiled files load");
    spoil(dir.path());
    // A missing file is fetched, from a closed local port here, so that fails too.
    let output = wgnorm(
        &[
            "train",
            "--device",
            "cpu",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--out",
            "run",
            "--download",
            "--mirror",
            "http://127.0.0.1:9/",
        ],
        dir.path(),
    );
    (mnist::load(dir.path()).unwrap_err().to_string(), output)
}

/// Changes one file of a valid data dir.
type Spoiler<'a> = Box<dyn FnOnce(&Path) + 'a>;

#[test]
fn malformed_files_are_errors_naming_the_file_and_the_problem() {
    let train_images = |dir: &Path| dir.join(MnistFile::TrainImages.stem());
    let train_labels = |dir: &Path| dir.join(MnistFile::TrainLabels.stem());
    let cases: Vec<(Spoiler<'_>, &str)> = vec![
        (
            Box::new(|d: &Path| std::fs::remove_file(train_images(d)).unwrap()),
            "not found",
        ),
        (
            Box::new(|d: &Path| std::fs::write(train_images(d), b"").unwrap()),
            "empty",
        ),
        (
            Box::new(|d: &Path| std::fs::write(train_images(d), b"IDX").unwrap()),
            "too short",
        ),
        (
            Box::new(|d: &Path| std::fs::write(train_images(d), idx_labels(&[1, 2])).unwrap()),
            "wrong magic",
        ),
        (
            Box::new(|d: &Path| {
                std::fs::write(train_images(d), idx_images(1_000_000, 28, 28, 2 * PIXELS)).unwrap()
            }),
            "announces 1000000",
        ),
        (
            Box::new(|d: &Path| {
                std::fs::write(train_images(d), idx_images(2, 32, 32, 2 * 1024)).unwrap()
            }),
            "32x32",
        ),
        (
            Box::new(|d: &Path| std::fs::write(train_labels(d), idx_labels(&[3, 10])).unwrap()),
            "label 10",
        ),
        (
            Box::new(|d: &Path| std::fs::write(train_labels(d), idx_labels(&[3, 4, 5])).unwrap()),
            "3 labels for 2 images",
        ),
        (
            Box::new(|d: &Path| {
                std::fs::remove_file(train_images(d)).unwrap();
                let full = gz(&idx_images(2, 28, 28, 2 * PIXELS));
                std::fs::write(
                    d.join(MnistFile::TrainImages.gz_name()),
                    &full[..full.len() / 2],
                )
                .unwrap();
            }),
            "truncated or corrupt gzip",
        ),
    ];
    for (spoil, needle) in cases {
        let (err, output) = load_spoiled(spoil);
        assert!(err.contains(needle), "'{needle}' not in: {err}");
        assert!(err.contains("ubyte"), "the error must name the file: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let said = match needle {
            "not found" => "train-images-idx3-ubyte.gz could not be fetched",
            _ => needle,
        };
        assert_one_line_error(&output, 2, said);
    }
}

/// Serves `files` (name → bytes) over HTTP on 127.0.0.1 for `requests` requests, then stops.
fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            let mut header = String::new();
            while reader.read_line(&mut header).unwrap() > 2 {
                header.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            let name = path.rsplit('/').next().unwrap_or("");
            match files.iter().find(|(n, _)| n == name) {
                Some((_, body)) => {
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .unwrap();
                    stream.write_all(body).unwrap();
                }
                None => write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap(),
            }
        }
    });
    (base, handle)
}

/// The four real `.gz` files, named as a mirror serves them.
fn real_files(shared: &Path) -> Vec<(String, Vec<u8>)> {
    MnistFile::ALL
        .iter()
        .map(|f| {
            (
                f.gz_name(),
                std::fs::read(shared.join(f.gz_name())).unwrap(),
            )
        })
        .collect()
}

#[test]
fn download_fetches_and_verifies_every_missing_file() {
    let Some(shared) = shared_mnist() else { return };
    let (base, server) = serve(real_files(&shared), 4);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mnist");
    ensure(Dataset::Mnist, &target, &[base]).unwrap();
    server.join().unwrap();
    let data = mnist::load(&target).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    // Present files are not fetched again: no server is running now.
    ensure(Dataset::Mnist, &target, &["http://127.0.0.1:9".to_string()]).unwrap();
}

/// Fashion-MNIST downloads the same way, checked against its own sums of the uncompressed data
/// (the copies in ../shared were recompressed, so only those sums can match them), and loads
/// with its class names.
#[test]
fn fashion_mnist_downloads_verifies_and_loads() {
    let Some(shared) = shared_mnist() else { return };
    let fashion = shared.join("../fashion-mnist");
    let (base, server) = serve(real_files(&fashion), 4);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("fashion-mnist");
    ensure(Dataset::FashionMnist, &target, &[base]).unwrap();
    server.join().unwrap();
    let data = mnist::load_dataset(Dataset::FashionMnist, &target).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    assert_eq!(data.dataset, Dataset::FashionMnist);
    assert_eq!(data.dataset.class_names()[9], "Ankle boot");
    // MNIST's sums refuse Fashion-MNIST's files.
    let (base, server) = serve(real_files(&fashion)[..1].to_vec(), 1);
    let err = ensure(Dataset::Mnist, &dir.path().join("wrong"), &[base])
        .unwrap_err()
        .to_string();
    server.join().unwrap();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn a_corrupt_or_missing_download_is_reported_and_deleted() {
    let Some(shared) = shared_mnist() else { return };
    let file = MnistFile::TestLabels;
    let sha256 = Dataset::Mnist.idx_sha256(file);
    // A well-formed gzip of other data, and a gzip stream with a flipped byte.
    let mut data = mnist::gunzip(
        &shared.join(file.gz_name()),
        &std::fs::read(shared.join(file.gz_name())).unwrap(),
    )
    .unwrap();
    data[100] ^= 0xff;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&data).unwrap();
    let other = encoder.finish().unwrap();
    let mut broken = std::fs::read(shared.join(file.gz_name())).unwrap();
    broken[100] ^= 0xff;
    let (base, server) = serve(
        vec![
            ("other.gz".to_string(), other),
            ("broken.gz".to_string(), broken),
        ],
        3,
    );
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(file.gz_name());
    let fetch = |name: &str| {
        fetch_verified(&format!("{base}/{name}"), &target, sha256)
            .unwrap_err()
            .to_string()
    };
    let err = fetch("other.gz");
    assert!(err.contains("does not match"), "{err}");
    let err = fetch("broken.gz");
    assert!(err.contains("gzip"), "{err}");
    let err = fetch("missing.gz");
    assert!(err.contains("404"), "{err}");
    server.join().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing may be left behind: {left:?}");
}

#[test]
fn train_downloads_missing_files_from_the_mirror_it_is_given() {
    let Some(shared) = shared_mnist() else { return };
    let (base, server) = serve(real_files(&shared), 4);
    let dir = tempfile::tempdir().unwrap();
    let train = |data_dir: &str, out: &str, mirror: &str| {
        let args = [
            "train",
            "--device",
            "cpu",
            "--train-limit",
            "64",
            "--epochs",
            "1",
        ];
        let mut args = args.to_vec();
        args.extend_from_slice(&[
            "--data-dir",
            data_dir,
            "--download",
            "--out",
            out,
            "--mirror",
            mirror,
        ]);
        wgnorm(&args, dir.path())
    };
    let output = train("mnist", "run", &base);
    // Checked before joining: a run that never asked would leave the server waiting.
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.join().unwrap();
    for file in MnistFile::ALL {
        assert!(dir.path().join("mnist").join(file.gz_name()).is_file());
    }
    assert!(dir.path().join("run/model.safetensors").is_file());

    // A mirror without the files: one line, exit 2, nothing partial left behind.
    let (base, server) = serve(Vec::new(), 1);
    let output = train("elsewhere", "run2", &base);
    assert_one_line_error(&output, 2, "download failed");
    server.join().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path().join("elsewhere"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "partial files left: {left:?}");
}

/// The common variant names (`train-images.idx3-ubyte`, as some archives ship MNIST), gzipped
/// or not, load like the standard ones.
#[test]
fn variant_file_names_are_found() {
    let dir = tempfile::tempdir().unwrap();
    for (images, labels) in [
        (MnistFile::TrainImages, MnistFile::TrainLabels),
        (MnistFile::TestImages, MnistFile::TestLabels),
    ] {
        let dotted = |file: MnistFile| file.stem().replacen("-idx", ".idx", 1);
        std::fs::write(
            dir.path().join(dotted(images)),
            idx_images(2, 28, 28, 2 * PIXELS),
        )
        .unwrap();
        let gz = dir.path().join(format!("{}.gz", dotted(labels)));
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &idx_labels(&[3, 9])).unwrap();
        std::fs::write(gz, encoder.finish().unwrap()).unwrap();
    }
    let data = mnist::load(dir.path()).expect("variant names load");
    assert_eq!((data.train.len(), data.test.len()), (2, 2));
    assert_eq!(data.train.labels, vec![3, 9]);
}

/// A --data-dir the user typed must hold MNIST: a missing folder is an error listing the files,
/// and is neither created nor downloaded into; a file is named as one; --download fetches.
#[test]
fn a_data_dir_that_was_typed_is_read_not_downloaded_into() {
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--device", "cpu", "--out", "run"];
        args.extend_from_slice(extra);
        wgnorm(&args, dir.path())
    };
    let output = train(&["--data-dir", "typo"]);
    assert_one_line_error(
        &output,
        2,
        "--data-dir typo lacks train-images-idx3-ubyte, train-labels-idx1-ubyte, \
         t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("pass --download to fetch them there")
    );
    assert!(!dir.path().join("typo").exists());
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    assert_one_line_error(
        &train(&["--data-dir", "afile"]),
        2,
        "--data-dir afile is a file, not a folder",
    );
    assert_one_line_error(
        &train(&["--data-dir", "typo", "--mirror", "http://127.0.0.1:9"]),
        2,
        "--mirror has no effect: nothing is downloaded into --data-dir typo without --download",
    );
    assert_one_line_error(&train(&["--download"]), 2, "--data-dir");
    assert!(!dir.path().join("run").exists());
}
