//! The spool: append-only segment files in the spool directory that carry captured page images
//! from the writer (inside SQLite's VFS calls) to the consumer thread.
//!
//! A segment is a header followed by transactions, each a run of `Page` entries closed by one
//! `Commit` entry. Only sealed transactions (followed by their `Commit`) are ever applied; anything
//! after the last valid `Commit` of a segment is a torn or abandoned tail and is ignored.

pub mod bell;
pub mod control;
pub mod format;
pub mod reader;
pub mod window;
pub mod writer;

use std::path::{Path, PathBuf};

/// File name of segment number `n` (zero padded so names sort in order).
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.seg"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}
