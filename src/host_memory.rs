//! What the operating system says about memory (Linux's /proc; elsewhere nothing is known).

/// Memory the OS could give this process now.
pub fn available() -> Option<u64> {
    proc_bytes("/proc/meminfo", "MemAvailable:")
}

/// The process's resident memory.
pub fn resident() -> Option<u64> {
    proc_bytes("/proc/self/status", "VmRSS:")
}

/// The kB figure after `key` in a /proc file, in bytes.
fn proc_bytes(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
