//! Small helpers shared by several modules.

/// Microseconds since the Unix epoch (0 if the clock is before it). Read with `clock_gettime`
/// directly: every commit stamps its record, and `SystemTime`'s checked subtraction and 128-bit
/// conversion cost half as much again as the clock read itself (vDSO, no syscall).
pub fn now_us() -> u64 {
    read_clock(libc::CLOCK_REALTIME).map_or(0, |(s, ns)| s * 1_000_000 + ns / 1_000)
}

/// Milliseconds on the system-wide monotonic clock: the same in every process of the machine
/// (counted from boot) and never set back, so processes can compare deadlines they publish in
/// shared memory. 0 if the clock cannot be read.
pub fn monotonic_ms() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC).map_or(0, |(s, ns)| s * 1_000 + ns / 1_000_000)
}

/// `clock` as (seconds, nanoseconds); `None` if it cannot be read or is before its epoch.
#[inline]
fn read_clock(clock: libc::clockid_t) -> Option<(u64, u64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here exist on Linux.
    let ok = unsafe { libc::clock_gettime(clock, &mut ts) } == 0 && ts.tv_sec >= 0;
    ok.then_some((ts.tv_sec as u64, ts.tv_nsec as u64))
}

/// Asks the allocator to hand the heap's free pages back to the system. After a huge batch (the
/// page lists and write-set entries of its scattered pages) the consumer thread's malloc arena
/// would otherwise keep what it freed resident: glibc shrinks a thread arena only from its top.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages to the system
    // (madvise), never memory still allocated.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tests only: an empty directory `<tag>-<name>` under this test process's own root,
/// `spoolvfs-unit-<pid>` in the system's temp dir (what was there is removed first).
///
/// The root is deleted when the process exits, and roots left by processes that died (a killed
/// run) are swept on first use, so test runs never pile up on a shared disk.
#[cfg(test)]
pub fn fresh_test_dir(tag: &str, name: &str) -> std::path::PathBuf {
    let d = test_root().join(format!("{tag}-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
fn test_root() -> std::path::PathBuf {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        sweep_dead_test_roots(&tmp);
        let root = tmp.join(format!("spoolvfs-unit-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        extern "C" fn remove_root_at_exit() {
            let root = std::env::temp_dir().join(format!("spoolvfs-unit-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(root);
        }
        // SAFETY: registers a plain function with no captured state; it only touches the file
        // system, which is still usable while exit handlers run.
        unsafe { libc::atexit(remove_root_at_exit) };
        root
    })
    .clone()
}

/// Removes the `spoolvfs-unit-<pid>` roots whose process no longer exists.
#[cfg(test)]
fn sweep_dead_test_roots(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("spoolvfs-unit-"))
            .and_then(|p| p.parse::<u64>().ok())
        else {
            continue;
        };
        if !crate::spool::control::pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Escapes `s` as a JSON string literal (with quotes).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_us_agrees_with_system_time() {
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let ours = super::now_us();
        assert!(
            ours.abs_diff(sys) < 5_000_000,
            "now_us {ours} vs SystemTime {sys}"
        );
    }

    #[test]
    fn json_escapes() {
        assert_eq!(
            super::json_string("a\"b\\c\n\u{1}"),
            "\"a\\\"b\\\\c\\n\\u0001\""
        );
    }
}
