//! `wgnorm predict` on a user's own files: PNGs of MNIST's size and of another size and colour,
//! `.npy` arrays, and files it cannot read, which are named while the others are classified.

mod common;

use std::path::Path;

use common::{shared_mnist, wgnorm};
use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::{self, PIXELS, SIDE};
use wgnorm::model::Classifier;
use wgnorm::optim::OptimizerConfig;

fn write_png(path: &Path, width: u32, height: u32, color: png::ColorType, data: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(data)
        .unwrap();
}

#[test]
fn predict_classifies_pngs_and_arrays_and_names_what_it_cannot_read() {
    let Some(data_dir) = shared_mnist() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_arg = data_dir.to_str().unwrap();
    let trained = wgnorm(
        &[
            "train",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--data-dir",
            data_arg,
            "--out",
            "m",
        ],
        dir.path(),
    );
    assert!(trained.status.success());
    let test = mnist::load(&data_dir).unwrap().test;
    let image = |i: usize| &test.images[i * PIXELS..(i + 1) * PIXELS];

    // Two test images as 28×28 grey PNGs, three as one (3, 28, 28) array.
    for i in 0..2 {
        write_png(
            &dir.path().join(format!("{i}.png")),
            28,
            28,
            png::ColorType::Grayscale,
            image(i),
        );
    }
    let three: Vec<f32> = (2..5)
        .flat_map(|i| image(i).iter().map(|&p| f32::from(p) / 255.0))
        .collect();
    wgnorm::data::npy::write(&dir.path().join("three.npy"), &[3, SIDE, SIDE], &three).unwrap();
    // Test image 5 drawn as a user would: black on white, in colour, 3× larger.
    let big: Vec<u8> = (0..84 * 84)
        .flat_map(|k| {
            let (x, y) = (k % 84 / 3, k / 84 / 3);
            [255 - image(5)[y * SIDE + x]; 3]
        })
        .collect();
    write_png(
        &dir.path().join("drawn.png"),
        84,
        84,
        png::ColorType::Rgb,
        &big,
    );
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    wgnorm::data::npy::write(&dir.path().join("wide.npy"), &[2, 3], &[0.5; 6]).unwrap();

    let files = [
        "0.png",
        "broken.png",
        "1.png",
        "three.npy",
        "wide.npy",
        "drawn.png",
    ];
    let mut args = vec![
        "predict",
        "--device",
        "cpu",
        "--checkpoint",
        "m/model.safetensors",
        "--json",
    ];
    args.extend_from_slice(&files);
    let output = wgnorm(&args, dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: invalid argument: broken.png: not a readable image"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wide.npy: an array of shape [2, 3]"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("2 of 6 files could not be read"),
        "{stderr}"
    );

    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "0.png",
            "1.png",
            "three.npy[0]",
            "three.npy[1]",
            "three.npy[2]",
            "drawn.png"
        ]
    );
    // The same classes as the library gives for the same pixels.
    let cpu = CpuBackend;
    let mut model = Classifier::load(
        &cpu,
        &dir.path().join("m/model.safetensors"),
        OptimizerConfig::adam(1e-3),
        0,
    )
    .unwrap();
    let pixels: Vec<f32> = (0..5)
        .flat_map(|i| image(i).iter().map(|&p| f32::from(p) / 255.0))
        .collect();
    let expected = model.predict(&cpu, &pixels).unwrap();
    for (row, class) in rows.iter().zip(&expected) {
        assert_eq!(row["class"], *class, "{row}");
        let top = row["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["class"], row["class"]);
        let p: Vec<f64> = top
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .collect();
        assert!(
            p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0 && p[2] >= 0.0,
            "{row}"
        );
    }
    // The drawn digit, inverted, cropped and centred, is read as the digit it is.
    assert_eq!(rows[5]["class"], u64::from(test.labels[5]), "{}", rows[5]);
}

/// `--dataset fashion-mnist`: training reads Fashion-MNIST and records it; `predict` names the
/// clothing classes.
#[test]
fn fashion_mnist_trains_and_predict_names_its_classes() {
    let Some(mnist_dir) = shared_mnist() else {
        return;
    };
    let fashion = mnist_dir.join("../fashion-mnist");
    let dir = tempfile::tempdir().unwrap();
    let trained = wgnorm(
        &[
            "train",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--train-limit",
            "6400",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            fashion.to_str().unwrap(),
            "--out",
            "f",
        ],
        dir.path(),
    );
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("f/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["dataset"], "fashion-mnist");
    // Fashion-MNIST, not MNIST, was read: a linear-ish model after 200 steps scores far below
    // MNIST's 90% there.
    let accuracy = metrics["test_acc"].as_f64().unwrap();
    assert!((0.6..0.9).contains(&accuracy), "{accuracy}");

    let test = mnist::load_dataset(mnist::Dataset::FashionMnist, &fashion)
        .unwrap()
        .test;
    let pixels: Vec<f32> = test.images[..PIXELS]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    wgnorm::data::npy::write(&dir.path().join("item.npy"), &[SIDE, SIDE], &pixels).unwrap();
    let output = wgnorm(
        &[
            "predict",
            "--device",
            "cpu",
            "--dataset",
            "fashion-mnist",
            "--checkpoint",
            "f/model.safetensors",
            "--json",
            "item.npy",
        ],
        dir.path(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names = mnist::Dataset::FashionMnist.class_names();
    let class = row["class"].as_u64().unwrap() as usize;
    assert_eq!(row["label"], names[class], "{row}");

    // eval --per-class names the clothing classes, each with its 1,000 test images.
    let output = wgnorm(
        &[
            "eval",
            "--device",
            "cpu",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            fashion.to_str().unwrap(),
            "--checkpoint",
            "f/model.safetensors",
            "--per-class",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + names.len(), "{text}");
    for (line, name) in lines[1..].iter().zip(names) {
        assert!(line.trim_start().starts_with(name), "{line}");
        assert!(line.ends_with(" of 1000)"), "{line}");
    }
}

/// 50,000 images in one `.npy` are classified in passes that fit the device's binding limit
/// (lavapipe's 128 MiB holds fewer than 43,000 of them in one tensor), each as `eval` scores
/// them: every copy of the test set gets eval's accuracy.
#[test]
fn predict_classifies_more_images_than_one_pass_binds() {
    let Some(data_dir) = shared_mnist() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_arg = data_dir.to_str().unwrap();
    common::train_on_cpu(dir.path(), data_arg, "mlp", "6400", "m", &[]);
    let test = mnist::load(&data_dir).unwrap().test;
    let copies = 5;
    let pixels: Vec<f32> = test.images.iter().map(|&p| f32::from(p) / 255.0).collect();
    let all: Vec<f32> = (0..copies).flat_map(|_| pixels.iter().copied()).collect();
    let images = copies * test.len();
    wgnorm::data::npy::write(&dir.path().join("all.npy"), &[images, PIXELS], &all).unwrap();
    drop(all);
    let mut devices = vec!["cpu"];
    if common::gpu().is_some() {
        devices.push("gpu");
    }
    for device in devices {
        let scored = common::wgnorm_ok(
            &[
                "eval",
                "--device",
                device,
                "--checkpoint",
                "m/model.safetensors",
                "--data-dir",
                data_arg,
                "--json",
            ],
            dir.path(),
        );
        let scored: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
        let output = common::wgnorm_ok(
            &[
                "predict",
                "--device",
                device,
                "--checkpoint",
                "m/model.safetensors",
                "--json",
                "all.npy",
            ],
            dir.path(),
        );
        let classes: Vec<u64> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                row["class"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(classes.len(), images, "{device}");
        for copy in classes.chunks_exact(test.len()) {
            let correct = copy
                .iter()
                .zip(&test.labels)
                .filter(|&(&class, &label)| class == u64::from(label))
                .count();
            let accuracy = correct as f64 / test.len() as f64;
            let eval = scored["test_acc"].as_f64().unwrap();
            assert!(
                (accuracy - eval).abs() < 1e-9,
                "{device}: {accuracy} against {eval}"
            );
        }
    }
}
