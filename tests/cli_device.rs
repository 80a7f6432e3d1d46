//! Which device a command runs on when none is named: a hardware GPU if there is one, else the
//! CPU, never a software adapter unless asked for; each run's first line says which and why.

mod common;

use common::{gpu, shared_mnist, wgnorm};
use wgnorm::gpu::device;

/// The first line wgnorm printed on stderr.
fn first_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    stderr.lines().next().unwrap_or_default().to_string()
}

#[test]
fn auto_takes_a_hardware_gpu_else_the_cpu_and_the_first_line_says_why() {
    let Some(gpu) = gpu() else { return };
    let adapters = device::adapters(&device::instance());
    let only_software = adapters
        .iter()
        .all(|adapter| device::is_software(adapter.get_info().device_type));
    let dir = tempfile::tempdir().unwrap();
    let Some(data) = shared_mnist() else { return };
    let data = data.to_str().unwrap();
    let train = |device: &[&str], out: &str| {
        let mut args = vec!["train", "--epochs", "1", "--train-limit", "64"];
        args.extend_from_slice(device);
        args.extend_from_slice(&["--data-dir", data, "--out", out]);
        wgnorm(&args, dir.path())
    };

    let listed = wgnorm(&["devices"], dir.path());
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let auto_line = listed.lines().last().unwrap_or_default();
    let by_default = first_line(&train(&[], "auto"));
    if only_software {
        let line = listed
            .lines()
            .find(|line| line.contains(&gpu.adapter().name))
            .unwrap_or_default();
        assert!(line.ends_with("; software, runs on the CPU"), "{listed}");
        assert!(
            auto_line.starts_with("--device auto: cpu (no hardware GPU, only the software"),
            "{listed}"
        );
        assert!(
            by_default.starts_with("device: cpu (auto: no hardware GPU, only the software"),
            "{by_default}"
        );
        assert!(by_default.contains(&gpu.adapter().name), "{by_default}");
        let one = adapters.len() == 1;
        let tail = if one { "it)" } else { "the first)" };
        assert!(
            by_default.ends_with(&format!("--device gpu uses {tail}")),
            "{by_default}"
        );
    } else {
        assert_eq!(
            auto_line, "--device auto: 0, the best hardware GPU",
            "{listed}"
        );
        assert!(
            by_default.ends_with("(auto: the best hardware GPU)"),
            "{by_default}"
        );
    }
    let asked = first_line(&train(&["--device", "gpu"], "gpu"));
    assert_eq!(
        asked,
        format!(
            "device: {} (--device gpu, the best adapter)",
            gpu.adapter().name
        )
    );
    let by_name = first_line(&train(&["--adapter", &gpu.adapter().name], "named"));
    assert_eq!(
        by_name,
        format!(
            "device: {} (the adapter matching '{}')",
            gpu.adapter().name,
            gpu.adapter().name
        )
    );
    let cpu = first_line(&train(&["--device", "cpu"], "cpu"));
    assert_eq!(cpu, "device: cpu (--device cpu)");
}

/// Without XDG_RUNTIME_DIR, Mesa's drivers print an "error:" line at every start; wgnorm gives
/// them a private directory first, so a run that works prints no error.
#[cfg(target_os = "linux")]
#[test]
fn a_run_without_xdg_runtime_dir_prints_no_error() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unset in [None, Some("")] {
        let mut command = common::wgnorm_command(&["devices"], dir.path());
        command.env("TMPDIR", dir.path());
        match unset {
            None => command.env_remove("XDG_RUNTIME_DIR"),
            Some(empty) => command.env("XDG_RUNTIME_DIR", empty),
        };
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    }
    let made = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().contains("wgnorm-runtime-"))
        .expect("wgnorm made its runtime directory under TMPDIR");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&made).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", made.display());
}
