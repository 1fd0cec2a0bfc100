//! The `spool_status()` report: one JSON object built from a consistent snapshot of `Progress`.

use crate::dbstate::{DbState, lock};
use crate::spool::format::SEGMENT_HEADER_LEN;
use crate::spool::segment_path;
use crate::spool::writer::SealedPos;
use crate::util::{json_string, now_us};

fn opt_str(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "null".to_string(), json_string)
}

/// Disk space the spool directory's files take (allocated blocks, reservations included).
fn spool_disk_bytes(state: &DbState) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(&state.cfg.spool) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Bytes of sealed transactions not yet applied: exact when both ends are in one segment. A
/// backlog that spans segments also counts the unwritten reserved tail of the segments it leaves
/// (a few MiB each), which no record tells apart from data without reading the segment.
fn pending_bytes(state: &DbState, applied: SealedPos, sealed: SealedPos) -> u64 {
    if sealed.segment <= applied.segment {
        return sealed.end.saturating_sub(applied.end);
    }
    let file_len =
        |no| std::fs::metadata(segment_path(&state.cfg.spool, no)).map_or(0, |m| m.len());
    let left = file_len(applied.segment).saturating_sub(applied.end);
    let between: u64 = (applied.segment + 1..sealed.segment)
        .map(|no| file_len(no).saturating_sub(SEGMENT_HEADER_LEN as u64))
        .sum();
    left + between + sealed.end.saturating_sub(SEGMENT_HEADER_LEN as u64)
}

/// Renders the status of `state` as a JSON object.
pub fn to_json(state: &DbState, journal_mode: &str) -> String {
    let c = &state.control;
    let sealed = c.sealed();
    let applied = c.applied();
    let (consumer_pid, beat_us) = c.consumer();
    let behind = c.behind_since();
    let captured = sealed.seq;
    let pending_records = captured.saturating_sub(applied.seq);
    let lag_ms = if pending_records == 0 || behind == 0 {
        0
    } else {
        now_us().saturating_sub(behind) / 1000
    };
    let p = lock(&state.progress);
    let last_error = p.last_error.clone().or_else(|| c.error());
    let fields = [
        ("version", json_string(env!("CARGO_PKG_VERSION"))),
        ("db", json_string(&state.cfg.db.to_string_lossy())),
        ("backup", json_string(&state.cfg.backup.to_string_lossy())),
        ("spool", json_string(&state.cfg.spool.to_string_lossy())),
        ("journal_mode", json_string(journal_mode)),
        ("state", json_string(p.phase.name())),
        ("captured", captured.to_string()),
        ("applied", applied.seq.to_string()),
        // Applied records whose span on the backup is committed (survive the applying process's
        // death and a power loss); `applied` ones are visible to the backup's readers.
        ("committed", c.committed_seq().min(applied.seq).to_string()),
        ("pending", pending_records.to_string()),
        (
            "pending_bytes",
            if pending_records == 0 {
                "0".to_string()
            } else {
                pending_bytes(state, applied.pos, sealed.pos).to_string()
            },
        ),
        ("spool_disk_bytes", spool_disk_bytes(state).to_string()),
        ("lag_ms", lag_ms.to_string()),
        ("last_error", opt_str(&last_error)),
        ("errors", p.errors.to_string()),
        ("resyncs", c.resyncs().to_string()),
        (
            "resync_pending",
            (c.resynced_gen() < c.lost_gen()).to_string(),
        ),
        ("clean_open", p.clean_open.to_string()),
        ("open_check", opt_str(&p.open_check)),
        ("consumer_pid", consumer_pid.to_string()),
        ("consumer_here", p.active.to_string()),
        (
            "consumer_beat_ms",
            (now_us().saturating_sub(beat_us) / 1000).to_string(),
        ),
        (
            "resync_progress",
            format!("[{},{}]", p.resync_done, p.resync_total),
        ),
        (
            "bytes_captured",
            state
                .bytes_captured
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ),
        ("bytes_applied", p.bytes_applied.to_string()),
        ("pages_applied", p.pages_applied.to_string()),
        ("batches", p.batches.to_string()),
        ("apply_ms", format!("{:.3}", p.apply_us as f64 / 1000.0)),
        ("durable", state.cfg.durable.to_string()),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}
