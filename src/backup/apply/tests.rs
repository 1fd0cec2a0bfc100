//! End-to-end tests of `apply`/`recover` against real databases made and read by the system
//! `sqlite3` CLI (which must be installed: these tests fail, never skip, without it).

use super::*;
use crate::backup::journal::journal_path;
use crate::backup::lock;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Tmp(crate::util::fresh_test_dir("apply", &format!("{n}-{name}")))
    }
    fn p(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `script` through `sqlite3 db`; asserts success and a clean stderr; returns stdout.
fn sql(db: &Path, script: &str) -> String {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 CLI must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3 {db:?} failed on {script:?}: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

const FILL: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{n}) \
                    INSERT INTO t(v) SELECT hex(randomblob(150)) FROM c;";

fn fill(n: u32) -> String {
    FILL.replace("{n}", &n.to_string())
}

/// State A: a rollback-mode database with `rows` rows.
fn make_a(path: &Path, page_size: u32, rows: u32) {
    sql(
        path,
        &format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=delete;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX tv ON t(v); {}",
            fill(rows)
        ),
    );
}

/// State B: a copy of A changed by `script`.
fn make_b(a: &Path, b: &Path, script: &str) {
    std::fs::copy(a, b).unwrap();
    sql(b, script);
}

fn count(db: &Path) -> String {
    sql(db, "SELECT count(*) FROM t;").trim().to_string()
}

fn db_page_size(bytes: &[u8]) -> u32 {
    let raw = u32::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    if raw == 1 { 65536 } else { raw }
}

/// A write set holding every page of the database at `path`, each page a `Source::File`.
fn pages_of(path: &Path) -> (WriteSet, u64, u32) {
    let bytes = std::fs::read(path).unwrap();
    let ps = db_page_size(&bytes);
    let f = Arc::new(File::open(path).unwrap());
    let mut ws = WriteSet::new();
    let mut off = 0u64;
    while off < bytes.len() as u64 {
        let src = Source::File {
            file: Arc::clone(&f),
            pos: off,
        };
        ws.insert(off, u64::from(ps), src);
        off += u64::from(ps);
    }
    (ws, bytes.len() as u64, ps)
}

fn opts(fail_at: Option<FailPoint>) -> ApplyOptions {
    ApplyOptions {
        lock_timeout: Duration::from_secs(5),
        sync: true,
        fail_at,
    }
}

/// A request that takes the backup to the database at `path`, every page of it.
fn request_of(path: &Path) -> ApplyRequest {
    let (writes, final_size, page_size) = pages_of(path);
    ApplyRequest {
        writes,
        final_size,
        page_size,
        bump_counter_if_unchanged: false,
    }
}

fn apply_file(backup: &Path, b: &Path, o: &ApplyOptions) -> io::Result<ApplyReport> {
    let (ws, size, ps) = pages_of(b);
    let req = ApplyRequest {
        writes: ws.clone(),
        final_size: size,
        page_size: ps,
        bump_counter_if_unchanged: false,
    };
    apply(backup, req.clone(), o)
}

/// The A->B transitions every test runs through: (name, A page size, B script).
const CASES: &[(&str, u32, &str)] = &[
    ("grow", 4096, "INSERT INTO t(v) SELECT v || 'x' FROM t;"),
    ("shrink", 4096, "DELETE FROM t WHERE id % 3 != 0; VACUUM;"),
    (
        "to1024",
        4096,
        "PRAGMA page_size=1024; VACUUM; DELETE FROM t WHERE id < 20;",
    ),
    (
        "to4096",
        1024,
        "PRAGMA page_size=4096; VACUUM; INSERT INTO t(v) VALUES('z');",
    ),
    ("onerow", 4096, "UPDATE t SET v = 'changed' WHERE id = 77;"),
];

fn setup(t: &Tmp, page_size: u32, script: &str) -> (PathBuf, PathBuf) {
    let (a, b) = (t.p("a.db"), t.p("b.db"));
    make_a(&a, page_size, 400);
    make_b(&a, &b, script);
    (a, b)
}

#[test]
fn apply_reaches_state_b_byte_for_byte() {
    for &(name, ps, script) in CASES {
        let t = Tmp::new(name);
        let (a, b) = setup(&t, ps, script);
        let backup = t.p("backup.db");
        std::fs::copy(&a, &backup).unwrap();
        let old_pages = std::fs::metadata(&a).unwrap().len() / u64::from(ps);
        let rep = apply_file(&backup, &b, &opts(None)).unwrap();
        let want = std::fs::read(&b).unwrap();
        assert!(
            std::fs::read(&backup).unwrap() == want,
            "{name}: bytes differ"
        );
        assert!(
            !is_hot(&journal_path(&backup)).unwrap(),
            "{name}: hot journal left"
        );
        assert_eq!(sql(&backup, "PRAGMA integrity_check;"), "ok\n", "{name}");
        assert_eq!(count(&backup), count(&b), "{name}");
        assert_eq!(rep.bytes_written, want.len() as u64, "{name}");
        assert_eq!(
            rep.pages_written,
            want.len() as u64 / u64::from(db_page_size(&want)),
            "{name}"
        );
        assert!(rep.pages_journaled > 0, "{name}");
        match name {
            // Only the changed pages (header, a leaf or two, index pages) are journaled.
            "onerow" => assert!(rep.pages_journaled < 10, "{name}: {rep:?}"),
            "to1024" | "to4096" => assert_eq!(rep.pages_journaled, old_pages, "{name}"),
            _ => {}
        }
    }
}

#[test]
fn apply_creates_missing_backup() {
    let t = Tmp::new("fresh");
    let (_a, b) = setup(&t, 4096, "INSERT INTO t(v) VALUES('fresh');");
    let backup = t.p("backup.db");
    let rep = apply_file(&backup, &b, &opts(None)).unwrap();
    assert_eq!(rep.pages_journaled, 0);
    assert!(std::fs::read(&backup).unwrap() == std::fs::read(&b).unwrap());
    assert_eq!(sql(&backup, "PRAGMA integrity_check;"), "ok\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o644, 0, "created with at most 0644, got {mode:o}");
}

/// A batch of several MiB is written with the upkeep called along the way (every `CHUNK`), not
/// only once it is done: the consumer keeps the writer's spool mapping ready meanwhile.
#[test]
fn a_big_batch_is_applied_with_upkeep_along_the_way() {
    let t = Tmp::new("upkeep");
    let a = t.p("a.db");
    make_a(&a, 4096, 12_000);
    let (writes, final_size, page_size) = pages_of(&a);
    assert!(
        final_size >= 3 * CHUNK,
        "source of {final_size} bytes is too small"
    );
    let backup = t.p("backup.db");
    let req = ApplyRequest {
        writes,
        final_size,
        page_size,
        bump_counter_if_unchanged: false,
    };
    let mut span = None;
    let mut calls = 0u64;
    apply_batch_with(&mut span, &backup, req, &opts(None), &mut || calls += 1)
        .map_err(|f| f.error)
        .unwrap();
    close_span(&mut span, &opts(None)).unwrap();
    assert!(std::fs::read(&backup).unwrap() == std::fs::read(&a).unwrap());
    assert!(
        calls >= final_size / CHUNK - 1,
        "upkeep called {calls} times for {final_size} bytes"
    );
}

const FAILS: [FailPoint; 4] = [
    FailPoint::AfterJournalRecords,
    FailPoint::AfterJournalHot,
    FailPoint::AfterSomeDbWrites,
    FailPoint::AfterDbSync,
];

/// Crashes `apply` at every step and checks the backup still reads as A, first through the
/// SQLite CLI (which must roll our hot journal back by itself), then through `recover`.
#[test]
fn crash_at_every_step_rolls_back_to_a() {
    for &(name, ps, script) in CASES {
        for fp in FAILS {
            for via_cli in [true, false] {
                let t = Tmp::new(name);
                let (a, b) = setup(&t, ps, script);
                let backup = t.p("backup.db");
                std::fs::copy(&a, &backup).unwrap();
                let what = format!("{name} {fp:?} cli={via_cli}");
                let err = apply_file(&backup, &b, &opts(Some(fp))).unwrap_err();
                assert_eq!(err.to_string(), "injected", "{what}");
                let jp = journal_path(&backup);
                assert!(jp.exists(), "{what}: journal must survive the crash");
                let a_bytes = std::fs::read(&a).unwrap();
                if fp == FailPoint::AfterDbSync {
                    // The crash left state B in the file; only the journal brings A back.
                    assert!(std::fs::read(&backup).unwrap() == std::fs::read(&b).unwrap());
                }
                if via_cli {
                    let out = sql(&backup, "PRAGMA integrity_check; SELECT count(*) FROM t;");
                    assert_eq!(out, format!("ok\n{}\n", count(&a)), "{what}");
                    if fp != FailPoint::AfterJournalRecords {
                        assert!(!jp.exists(), "{what}: SQLite should have rolled back");
                    }
                    assert!(std::fs::read(&backup).unwrap() == a_bytes, "{what}: bytes");
                } else {
                    let rolled = recover(&backup, Duration::from_secs(5)).unwrap();
                    assert_eq!(rolled, fp != FailPoint::AfterJournalRecords, "{what}");
                    assert!(!is_hot(&jp).unwrap(), "{what}: journal still hot");
                    assert!(std::fs::read(&backup).unwrap() == a_bytes, "{what}: bytes");
                    assert_eq!(sql(&backup, "PRAGMA integrity_check;"), "ok\n", "{what}");
                }
                // The next apply (which recovers first if needed) still reaches B.
                apply_file(&backup, &b, &opts(None)).unwrap();
                assert!(
                    std::fs::read(&backup).unwrap() == std::fs::read(&b).unwrap(),
                    "{what}"
                );
            }
        }
    }
}

/// A batch that only appends pages journals nothing, yet a crash must still cut the file back:
/// the zero-record journal carries the original size, and SQLite honours it.
#[test]
fn crash_during_pure_growth_truncates_back() {
    for via_cli in [true, false] {
        let t = Tmp::new("append");
        let a = t.p("a.db");
        make_a(&a, 4096, 50);
        let backup = t.p("backup.db");
        std::fs::copy(&a, &backup).unwrap();
        let a_bytes = std::fs::read(&a).unwrap();
        let len = a_bytes.len() as u64;
        let mut ws = WriteSet::new();
        let junk = Arc::new(vec![0x77u8; 8192]);
        ws.insert(
            len,
            8192,
            Source::Bytes {
                data: junk,
                start: 0,
            },
        );
        let req = ApplyRequest {
            writes: ws.clone(),
            final_size: len + 8192,
            page_size: 4096,
            bump_counter_if_unchanged: false,
        };
        let err = apply(&backup, req.clone(), &opts(Some(FailPoint::AfterDbSync))).unwrap_err();
        assert_eq!(err.to_string(), "injected");
        assert_eq!(std::fs::metadata(&backup).unwrap().len(), len + 8192);
        let jlen = std::fs::metadata(journal_path(&backup)).unwrap().len();
        // Header, then the zeroed sector that stops playback there: no records.
        assert_eq!(jlen, 1024, "header and end-of-journal sector only");
        if via_cli {
            let out = sql(&backup, "PRAGMA integrity_check; SELECT count(*) FROM t;");
            assert_eq!(out, "ok\n50\n");
        } else {
            assert!(recover(&backup, Duration::from_secs(1)).unwrap());
        }
        assert!(std::fs::read(&backup).unwrap() == a_bytes, "cli={via_cli}");
        // Without the crash the same batch commits and reports no journaled pages.
        let rep = apply(&backup, req.clone(), &opts(None)).unwrap();
        assert_eq!(rep.pages_journaled, 0);
        assert_eq!(rep.pages_written, 2);
        assert_eq!(std::fs::metadata(&backup).unwrap().len(), len + 8192);
    }
}

#[test]
fn wal_header_becomes_rollback() {
    let t = Tmp::new("wal");
    let (a, b) = (t.p("a.db"), t.p("b.db"));
    make_a(&a, 4096, 100);
    sql(
        &b,
        &format!(
            "PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); {}",
            fill(300)
        ),
    );
    let b_bytes = std::fs::read(&b).unwrap();
    assert_eq!(
        (b_bytes[18], b_bytes[19]),
        (2, 2),
        "B should be a WAL database"
    );
    assert!(!t.p("b.db-wal").exists(), "CLI checkpoints on close");
    let backup = t.p("backup.db");
    std::fs::copy(&a, &backup).unwrap();
    apply_file(&backup, &b, &opts(None)).unwrap();
    let got = std::fs::read(&backup).unwrap();
    assert_eq!((got[18], got[19]), (1, 1));
    let mut want = b_bytes.clone();
    want[18] = 1;
    want[19] = 1;
    assert!(got == want, "nothing but bytes 18/19 differ from B");
    assert_eq!(sql(&backup, "PRAGMA journal_mode;"), "delete\n");
    assert_eq!(
        sql(&backup, "PRAGMA integrity_check; SELECT count(*) FROM t;"),
        "ok\n300\n"
    );
    assert!(!t.p("backup.db-wal").exists());
    assert!(!t.p("backup.db-shm").exists());
}

#[test]
fn counter_bumped_only_when_unchanged() {
    let t = Tmp::new("counter");
    let (a, b) = setup(&t, 4096, "UPDATE t SET v = 'new' WHERE id = 5;");
    let a_bytes = std::fs::read(&a).unwrap();
    let b_bytes = std::fs::read(&b).unwrap();
    assert_ne!(a_bytes[24..28], b_bytes[24..28]);
    let (mut ws, size, ps) = pages_of(&b);
    // Model a WAL-mode capture: page content changed, file-version bytes 24..40 as in A.
    ws.insert(
        24,
        16,
        Source::Bytes {
            data: Arc::new(a_bytes[24..40].to_vec()),
            start: 0,
        },
    );
    let backup = t.p("backup.db");
    for bump in [false, true] {
        std::fs::copy(&a, &backup).unwrap();
        let req = ApplyRequest {
            writes: ws.clone(),
            final_size: size,
            page_size: ps,
            bump_counter_if_unchanged: bump,
        };
        apply(&backup, req.clone(), &opts(None)).unwrap();
        let got = std::fs::read(&backup).unwrap();
        let old = u32::from_be_bytes(a_bytes[24..28].try_into().unwrap());
        let now = u32::from_be_bytes(got[24..28].try_into().unwrap());
        if bump {
            assert_eq!(now, old + 1);
            assert_eq!(got[92..96], got[24..28], "version-valid-for follows");
            let pages = u32::from_be_bytes(got[28..32].try_into().unwrap());
            assert_eq!(u64::from(pages), size / u64::from(ps));
        } else {
            assert_eq!(now, old);
        }
        assert!(got[100..] == b_bytes[100..]);
        assert_eq!(sql(&backup, "PRAGMA integrity_check;"), "ok\n");
        assert_eq!(sql(&backup, "SELECT v FROM t WHERE id = 5;"), "new\n");
    }
    // A batch that changes 24..40 itself is left alone.
    std::fs::copy(&a, &backup).unwrap();
    let (ws, size, ps) = pages_of(&b);
    let req = ApplyRequest {
        writes: ws.clone(),
        final_size: size,
        page_size: ps,
        bump_counter_if_unchanged: true,
    };
    apply(&backup, req.clone(), &opts(None)).unwrap();
    assert!(std::fs::read(&backup).unwrap() == b_bytes);
}

/// A reader in a long read transaction: apply waits for it, times out cleanly (backup still A,
/// no journal), and succeeds once the reader is gone.
#[test]
fn apply_waits_for_readers_and_times_out_cleanly() {
    let t = Tmp::new("reader");
    let (a, b) = setup(&t, 4096, "INSERT INTO t(v) VALUES('late');");
    let backup = t.p("backup.db");
    std::fs::copy(&a, &backup).unwrap();
    let mut reader = Command::new("sqlite3")
        .arg(&backup)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 CLI must be installed");
    let mut rin = reader.stdin.take().unwrap();
    rin.write_all(b"BEGIN;\nSELECT count(*) FROM t;\n").unwrap();
    rin.flush().unwrap();
    let f = File::open(&backup).unwrap();
    let start = Instant::now();
    while !lock::shared_held_by_other(&f).unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reader never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = ApplyOptions {
        lock_timeout: Duration::from_millis(100),
        ..opts(None)
    };
    let err = apply_file(&backup, &b, &o).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(!is_hot(&journal_path(&backup)).unwrap());
    assert!(std::fs::read(&backup).unwrap() == std::fs::read(&a).unwrap());
    // The reader can still start new statements (no PENDING left behind) and ends cleanly.
    rin.write_all(b"SELECT count(*) FROM t;\nCOMMIT;\n")
        .unwrap();
    drop(rin);
    let out = reader.wait_with_output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let n = count(&a);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{n}\n{n}\n")
    );
    apply_file(&backup, &b, &o).unwrap();
    assert!(std::fs::read(&backup).unwrap() == std::fs::read(&b).unwrap());
}

/// Writes never land on the lock-byte page (checked on a sparse >1 GiB file, no SQLite).
#[test]
fn lock_byte_page_is_never_written() {
    let t = Tmp::new("lockpage");
    let backup = t.p("backup.bin");
    let ps = 4096u64;
    let start = PENDING_BYTE - ps;
    let mut ws = WriteSet::new();
    let data = Arc::new(vec![0xABu8; 3 * ps as usize]);
    ws.insert(start, 3 * ps, Source::Bytes { data, start: 0 });
    let req = ApplyRequest {
        writes: ws.clone(),
        final_size: PENDING_BYTE + 2 * ps,
        page_size: 4096,
        bump_counter_if_unchanged: true,
    };
    let rep = apply(&backup, req.clone(), &opts(None)).unwrap();
    assert_eq!(rep.bytes_written, 2 * ps);
    assert_eq!(rep.pages_written, 2);
    let f = File::open(&backup).unwrap();
    let mut buf = vec![0u8; 3 * ps as usize];
    f.read_exact_at(&mut buf, start).unwrap();
    assert!(buf[..ps as usize].iter().all(|b| *b == 0xAB));
    assert!(buf[ps as usize..2 * ps as usize].iter().all(|b| *b == 0));
    assert!(buf[2 * ps as usize..].iter().all(|b| *b == 0xAB));
}

#[test]
fn bad_requests_are_errors() {
    let t = Tmp::new("bad");
    let ws = WriteSet::new();
    for ps in [0, 100, 3000, 131072] {
        let req = ApplyRequest {
            writes: ws.clone(),
            final_size: 0,
            page_size: ps,
            bump_counter_if_unchanged: false,
        };
        let e = apply(&t.p("x.db"), req.clone(), &opts(None)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{ps}");
    }
    assert!(!recover(&t.p("none.db"), Duration::ZERO).unwrap());
}

/// The journal is reused across applies. After a big batch leaves a long journal behind, a small
/// batch that crashes once its journal is hot must roll back to exactly the state before it,
/// through SQLite and through `recover`: the stale records after ours must never be replayed.
#[test]
fn a_reused_journal_never_replays_stale_records() {
    for via_cli in [true, false] {
        let t = Tmp::new("reuse");
        let (a, b) = setup(&t, 4096, "UPDATE t SET v = v || 'big change';");
        let (_, c) = (t.p("unused"), t.p("c.db"));
        make_b(&b, &c, "UPDATE t SET v = 'small' WHERE id = 5;");
        let backup = t.p("backup.db");
        std::fs::copy(&a, &backup).unwrap();
        apply_file(&backup, &b, &opts(None)).unwrap();
        let jp = journal_path(&backup);
        let big_journal = std::fs::metadata(&jp).unwrap().len();
        assert!(!is_hot(&jp).unwrap());
        let err = apply_file(&backup, &c, &opts(Some(FailPoint::AfterDbSync))).unwrap_err();
        assert_eq!(err.to_string(), "injected");
        assert!(is_hot(&jp).unwrap(), "the crashed batch's journal is hot");
        assert_eq!(
            std::fs::metadata(&jp).unwrap().len(),
            big_journal,
            "the small journal reused the big one's file, stale records included"
        );
        if via_cli {
            let out = sql(&backup, "PRAGMA integrity_check; SELECT count(*) FROM t;");
            assert_eq!(out, format!("ok\n{}\n", count(&b)));
        } else {
            assert!(recover(&backup, Duration::from_secs(5)).unwrap());
        }
        assert!(
            std::fs::read(&backup).unwrap() == std::fs::read(&b).unwrap(),
            "rolled back to exactly the state before the small batch (cli={via_cli})"
        );
    }
}

/// Cutting zero pages off the end (a sparse tail, say) journals none of them, and a crash after
/// the cut still restores the exact original bytes: the rollback sets the file back to its
/// original size first, which brings the zero pages back.
#[test]
fn cut_zero_pages_are_not_journaled_and_still_come_back() {
    for via_cli in [true, false] {
        let t = Tmp::new("cutzero");
        let a = t.p("a.db");
        make_a(&a, 4096, 50);
        let backup = t.p("backup.db");
        std::fs::copy(&a, &backup).unwrap();
        let len = std::fs::metadata(&a).unwrap().len();
        // 4,000 zero pages past the database (a hole: no blocks), plus one non-zero page.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&backup)
            .unwrap();
        f.set_len(len + 4000 * 4096).unwrap();
        f.write_all_at(&[0x55u8; 4096], len + 4000 * 4096).unwrap();
        drop(f);
        let before = std::fs::read(&backup).unwrap();
        let req = ApplyRequest {
            writes: WriteSet::new(),
            final_size: len,
            page_size: 4096,
            bump_counter_if_unchanged: false,
        };
        let err = apply(&backup, req, &opts(Some(FailPoint::AfterDbSync))).unwrap_err();
        assert_eq!(err.to_string(), "injected");
        assert_eq!(std::fs::metadata(&backup).unwrap().len(), len);
        // The non-zero page (and the header) are journaled; the 4,000 zero ones are not.
        let jlen = std::fs::metadata(journal_path(&backup)).unwrap().len();
        assert!(
            jlen < 4 * 4096,
            "journal of {jlen} bytes for one non-zero page"
        );
        if via_cli {
            let out = sql(&backup, "PRAGMA integrity_check; SELECT count(*) FROM t;");
            assert_eq!(out, "ok\n50\n");
        } else {
            assert!(recover(&backup, Duration::from_secs(1)).unwrap());
        }
        assert!(std::fs::read(&backup).unwrap() == before, "cli={via_cli}");
    }
}

/// Copies the backup and its journal as a crash would leave them (our locks do not travel with
/// the copy) and opens the copy with the sqlite3 CLI, which rolls the hot journal back.
fn crash_copy(t: &Tmp, backup: &Path, name: &str) -> PathBuf {
    let copy = t.p(name);
    std::fs::copy(backup, &copy).unwrap();
    let j = journal_path(backup);
    if j.exists() {
        std::fs::copy(&j, journal_path(&copy)).unwrap();
    }
    assert_eq!(sql(&copy, "PRAGMA integrity_check;"), "ok\n", "{name}");
    copy
}

#[test]
fn a_span_applies_many_batches_and_rolls_back_to_its_start() {
    let t = Tmp::new("span");
    let a = t.p("a.db");
    make_a(&a, 4096, 400);
    // Each state from the one before: grow, shrink below the span's start size (VACUUM cuts
    // pages), grow again over the cut pages, then a one-row change.
    let steps = [
        fill(400),
        "DELETE FROM t WHERE id % 5 != 0; VACUUM;".to_string(),
        fill(900),
        "UPDATE t SET v = 'changed' WHERE id = 5;".to_string(),
    ];
    let mut states = vec![a.clone()];
    for (i, script) in steps.iter().enumerate() {
        let next = t.p(&format!("s{}.db", i + 1));
        make_b(states.last().unwrap(), &next, script);
        states.push(next);
    }
    let a_len = std::fs::metadata(&a).unwrap().len();
    assert!(
        std::fs::metadata(&states[2]).unwrap().len() < a_len,
        "step 2 must shrink"
    );
    assert!(
        std::fs::metadata(&states[3]).unwrap().len() > a_len,
        "step 3 must regrow"
    );

    let backup = t.p("backup.db");
    std::fs::copy(&a, &backup).unwrap();
    let o = opts(None);
    let mut span = None;
    let mut journaled = 0;
    for (i, state) in states.iter().enumerate().skip(1) {
        let req = request_of(state);
        let rep = apply_batch(&mut span, &backup, req, &o).unwrap();
        journaled += rep.pages_journaled;
        assert!(span.is_some(), "batch {i}: the span stays open");
        assert!(
            std::fs::read(&backup).unwrap() == std::fs::read(state).unwrap(),
            "batch {i}: the backup holds the batch's state"
        );
        // Another process reads the live backup: it finds our hot journal, sees RESERVED held,
        // and reads the batch's state without rolling anything back.
        assert_eq!(sql(&backup, "PRAGMA integrity_check;"), "ok\n", "batch {i}");
        assert_eq!(count(&backup), count(state), "batch {i}");
        assert!(is_hot(&journal_path(&backup)).unwrap(), "batch {i}");
        // A crash now goes back to the span's start, byte for byte.
        let copy = crash_copy(&t, &backup, &format!("crash{i}.db"));
        assert!(
            std::fs::read(&copy).unwrap() == std::fs::read(&a).unwrap(),
            "batch {i}: a crash must roll back to the span's start"
        );
    }
    // Pages journaled once each: no more than the span-start database had.
    assert!(journaled <= a_len / 4096, "journaled {journaled} pages");
    close_span(&mut span, &o).unwrap();
    assert!(!is_hot(&journal_path(&backup)).unwrap());
    let last = states.last().unwrap();
    assert!(std::fs::read(&backup).unwrap() == std::fs::read(last).unwrap());
    let copy = crash_copy(&t, &backup, "after_close.db");
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(last).unwrap());
    // The lock went with the span: a writer can take the backup now.
    sql(&backup, "BEGIN IMMEDIATE; COMMIT;");
}

#[test]
fn a_span_ends_cleanly_on_a_page_size_change_and_on_failure() {
    let t = Tmp::new("spanfail");
    let (a, b) = setup(&t, 4096, "PRAGMA page_size=1024; VACUUM;");
    let c = t.p("c.db");
    make_b(&b, &c, "INSERT INTO t(v) VALUES('after');");
    let backup = t.p("backup.db");
    std::fs::copy(&a, &backup).unwrap();
    let o = opts(None);
    let mut span = None;
    for state in [&b, &c] {
        let req = request_of(state);
        apply_batch(&mut span, &backup, req, &o).unwrap();
        assert!(std::fs::read(&backup).unwrap() == std::fs::read(state).unwrap());
    }
    // The page-size change was a span of its own, committed before `c` began a new one.
    let copy = crash_copy(&t, &backup, "crash.db");
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&b).unwrap());

    // A batch failing among its database writes after an earlier batch of the span reports that
    // the backup goes back past that batch, and leaves the hot journal that takes it there.
    let d = t.p("d.db");
    make_b(&c, &d, &fill(300));
    let req = request_of(&d);
    let failure = apply_batch(
        &mut span,
        &backup,
        req,
        &opts(Some(FailPoint::AfterSomeDbWrites)),
    )
    .unwrap_err();
    assert!(failure.reverted && span.is_none());
    assert!(recover(&backup, Duration::from_secs(5)).unwrap());
    assert!(std::fs::read(&backup).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn a_zero_page_cut_and_written_again_in_one_span_is_restored() {
    let t = Tmp::new("spanzero");
    let backup = t.p("backup.bin");
    let ps = 512usize;
    // Four pages, the middle two all zeros (as a file extended but not written leaves them).
    let mut start = vec![0u8; 4 * ps];
    start[..ps].fill(0x11);
    start[3 * ps..].fill(0x44);
    std::fs::write(&backup, &start).unwrap();
    let page = |byte: u8| Source::Bytes {
        data: Arc::new(vec![byte; ps]),
        start: 0,
    };
    let o = opts(None);
    let mut span = None;
    // Batch 1 cuts the file to one page: the zero pages need no journal record then.
    let req = ApplyRequest {
        writes: WriteSet::new(),
        final_size: ps as u64,
        page_size: ps as u32,
        bump_counter_if_unchanged: false,
    };
    apply_batch(&mut span, &backup, req, &o).unwrap();
    // Batch 2 grows it back and writes page 2: now its zeros must be journaled, since a rollback
    // only cuts the file back to four pages.
    let mut writes = WriteSet::new();
    writes.insert(ps as u64, ps as u64, page(0x22));
    let req = ApplyRequest {
        writes,
        final_size: 4 * ps as u64,
        page_size: ps as u32,
        bump_counter_if_unchanged: false,
    };
    apply_batch(&mut span, &backup, req, &o).unwrap();
    assert_eq!(std::fs::read(&backup).unwrap()[ps..2 * ps], vec![0x22; ps]);
    // Crash: the span's locks go, the journal stays; recovery must give back the start.
    drop(span.take());
    super::unlock_description(
        &crate::backup::handle::open(&backup, false)
            .unwrap()
            .unwrap(),
    );
    assert!(recover(&backup, Duration::from_secs(5)).unwrap());
    assert!(
        std::fs::read(&backup).unwrap() == start,
        "rolled back to the span's start"
    );
}
