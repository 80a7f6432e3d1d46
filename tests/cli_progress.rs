//! What a user's terminal shows once a run ends: the run's lines and nothing of its progress
//! bars. The run happens in a pseudo-terminal (`script` from util-linux), and its output is
//! replayed through a terminal emulator (vt100) to get the final screen.

mod common;

use common::shared_mnist;

/// The screen left after `args` ran in a 40×160 pseudo-terminal, its non-empty lines.
fn final_screen(args: &[&str], dir: &std::path::Path) -> Vec<String> {
    let command = format!(
        "stty cols 160 rows 40; exec {} {}",
        env!("CARGO_BIN_EXE_wgnorm"),
        args.join(" ")
    );
    let output = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .output()
        .expect("script (util-linux) runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let size = |n: u16| std::num::NonZero::new(n).unwrap();
    let mut parser = vt100::Parser::new(size(40), size(160), 0);
    parser.process(&output.stdout);
    parser
        .screen()
        .contents()
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_finished_run_leaves_only_its_lines_on_the_terminal() {
    let Some(data) = shared_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = data.to_str().unwrap();
    let screen = final_screen(
        &[
            "train",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--data-dir",
            data,
            "--out",
            "run",
        ],
        dir.path(),
    );
    let expected_starts = [
        "device: cpu (--device cpu)",
        "training nn.Sequential(",
        "epoch 1/2  train loss",
        "epoch 2/2  train loss",
        "test loss",
        "test acc",
    ];
    assert_eq!(screen.len(), expected_starts.len(), "{screen:#?}");
    for (line, start) in screen.iter().zip(expected_starts) {
        assert!(line.starts_with(start), "{screen:#?}");
    }

    let screen = final_screen(
        &[
            "compare",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--train-limit",
            "20000",
            "--data-dir",
            data,
            "--out",
            "cmp",
        ],
        dir.path(),
    );
    let stale: Vec<&String> = screen
        .iter()
        .filter(|line| line.contains("ETA") || line.starts_with("runs "))
        .collect();
    assert!(stale.is_empty(), "progress left on screen: {screen:#?}");
}
