//! The `wgnorm` command line, built on the library. Its modules are the binary's own, not
//! library API.

mod cli;
mod plot;
mod report;

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    ensure_runtime_dir();
    cli::main()
}

/// Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid or not set in the environment"
/// twice on every start without that variable, and a user reads "error" in a run that worked.
/// Where it is unset or names no directory, it is pointed at a private directory of wgnorm's
/// (mode 0700, owned by the user). Runs first in `main`, before any other thread exists, as
/// changing the environment requires.
#[cfg(target_os = "linux")]
fn ensure_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let set = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|dir| !dir.is_empty() && std::path::Path::new(&dir).is_dir());
    if set {
        return;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("wgnorm-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let private = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
    if private {
        // SAFETY: no other thread exists yet (see above).
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}
