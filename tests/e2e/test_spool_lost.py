"""The spool damaged or gone: deleted under a running process, its newest segment truncated
(power loss of an unsynced tail), garbage written into a segment. The spool is only a means: any
such loss must be detected (sequence numbers, checksums) and repaired by a resync, so the backup
still converges to the source, and is never silently wrong.
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path

import pytest

import spool_helpers as sh


def write_some(con, rng, n: int) -> None:
    for _ in range(n):
        with con:
            con.execute(
                "INSERT INTO t(k, v) VALUES(?, randomblob(?))",
                (rng.randint(0, 999), rng.randint(10, 8000)),
            )
            con.execute(
                "UPDATE t SET v = randomblob(?) WHERE id = ?",
                (rng.randint(10, 3000), rng.randint(1, 50)),
            )


def segments(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.seg"), key=lambda p: (len(p.name), p.name))


def open_with_rows(connections, tmp_path, rng, journal: str, n: int):
    """A spool connection to a new app.db (small cache, so transactions spill) with table t and
    `n` write rounds committed; returns (db, backup, connection)."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode=journal, cache_size=20)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    write_some(con, rng, n)
    return db, backup, con


def remove_tree_in_use(path: Path) -> None:
    """`rm -rf` of a directory the product is using: its consumer may recreate files in it while
    the tree is being removed (it follows a deleted spool at once), and then the final rmdir
    finds the directory not empty. Repeat until the directory is gone, as a user would."""
    for _ in range(50):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
    raise AssertionError(f"setup: could not remove {path}: files kept reappearing")


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_spool_directory_deleted_while_open(connections, tmp_path, rng, repro, journal):
    """`rm -rf` of the whole spool directory while a spool connection is open; the application
    keeps committing (every transaction succeeds); spool_sync(30000) = 1 and the backup equals
    the source."""
    ctx = f"{journal}; {repro}"
    db, backup, con = open_with_rows(connections, tmp_path, rng, journal, 60)
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 before the deletion [{ctx}]"
    spool = Path(sh.spool_status(con)["spool"])
    assert spool.is_dir(), f"setup: spool directory {spool} exists [{ctx}]"
    write_some(con, rng, 5)  # some of it possibly not applied yet
    remove_tree_in_use(spool)
    write_some(con, rng, 40)
    n = sh.scalar(con, "SELECT count(*) FROM t")
    assert n == 105, f"expected all 105 inserts committed in the source, got {n} [{ctx}]"
    got = sh.spool_sync(con, 30000)
    st = sh.spool_status(con)
    assert got == 1, (
        f"expected spool_sync(30000) = 1 after the spool directory was deleted, got {got}; "
        f"spool dir exists again: {spool.is_dir()}; status {st} [{ctx}]"
    )
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


CONSUMER_PARKED_OFFSET = 2056


def test_a_sync_asked_just_before_the_consumer_follows_a_deleted_spool(fault_env, procs, tmp_path):
    """Fault build: the consumer is parked (it sleeps 120 s unless rung) when the spool directory
    is deleted, so the first thing it learns of the deletion comes after `spool_sync` took its
    ticket in the old control file and rang. The consumer then moves to a new control file, whose
    counters start over: a ticket of the old one was never answered there, and the call waited
    out its timeout (seen once in a loaded full e2e run). The caller must ask again in the new
    file and get 1 once the resync is done. The bound times nothing: it tells an answer from the
    20 s timeout."""
    Path(fault_env["SPOOLVFS_FAULTS_FILE"]).write_text("parked_sleeps_long\n")
    db, backup, spool = tmp_path / "app.db", tmp_path / "app.db-backup", tmp_path / "app.db-spool"
    a = sh.DrivenChild(
        procs, fault_env, sh.spool_uri_params(db, backup=backup, spool=spool), tmp_path / "a.err"
    )
    a.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(3):
        a.sql(f"INSERT INTO t(v) VALUES('row {i}')")
    assert a.sync(60_000) == 1

    def parked() -> bool:
        raw = (spool / "control").read_bytes()
        return int.from_bytes(raw[CONSUMER_PARKED_OFFSET : CONSUMER_PARKED_OFFSET + 8], "little")

    sh.wait_until(parked, what="the consumer parked")
    remove_tree_in_use(spool)
    started = time.monotonic()
    got = a.sync(20_000)
    took = time.monotonic() - started
    assert got == 1, f"spool_sync after the deletion returned {got} after {took:.1f} s"
    st = a.status()
    assert "recreated" in (st["last_error"] or "") and st["resyncs"] >= 1, (
        f"expected the recreated spool's resync: {st}"
    )
    a.converged(db, backup, "delete")
    a.close()


def killed_writer(procs, child_env, tmp_path, rng, journal):
    """A helper process commits a burst of large transactions and is SIGKILLed right after the
    last one returns (its backlog possibly unapplied). Returns (db, backup, spool)."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    child = sh.SqlChild(procs, child_env, db, backup, journal_mode=journal, cache_size=20)
    child.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    for i in range(rng.randint(20, 60)):
        child.sql(
            f"BEGIN; INSERT INTO t(k, v) VALUES({i}, randomblob({rng.randint(10, 20000)}));"
            f" UPDATE t SET v = randomblob({rng.randint(10, 3000)})"
            f" WHERE id = {rng.randint(1, i + 1)};"
            " COMMIT"
        )
    child.proc.kill()
    child.proc.wait(timeout=60)
    return db, backup, Path(f"{db}-spool")


@pytest.mark.parametrize("attempt", [1, 2])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_truncated_newest_segment(
    procs, child_env, connections, tmp_path, rng, repro, journal, attempt
):
    """Power loss of the spool tail: with nobody using the database, the newest segment is cut to
    a random length; reopening through spool and spool_sync give a backup equal to the source."""
    db, backup, spool = killed_writer(procs, child_env, tmp_path, rng, journal)
    segs = segments(spool)
    assert segs, f"setup: expected segments in {spool} after the kill"
    seg = segs[-1]
    size = seg.stat().st_size
    cut = rng.randrange(0, size + 1)
    with open(seg, "r+b") as f:
        f.truncate(cut)
    ctx = f"{journal}, {seg.name} cut from {size} to {cut} bytes; {repro}"
    con = connections(db, backup)
    sh.assert_sync_recovers(con, db, backup, "the truncation", ctx)


@pytest.mark.parametrize("attempt", [1, 2])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_garbage_in_a_segment(
    procs, child_env, connections, tmp_path, rng, repro, journal, attempt
):
    """With nobody using the database, random bytes overwrite the middle of a segment; reopening
    through spool and spool_sync give a backup equal to the source (checksums catch the damage;
    nothing garbled reaches the backup)."""
    db, backup, spool = killed_writer(procs, child_env, tmp_path, rng, journal)
    segs = segments(spool)
    assert segs, f"setup: expected segments in {spool} after the kill"
    seg = rng.choice(segs)
    size = seg.stat().st_size
    length = min(rng.randint(1, 4096), max(1, size // 4))
    at = rng.randrange(size // 4, max(size // 4 + 1, 3 * size // 4))
    with open(seg, "r+b") as f:
        f.seek(at)
        f.write(rng.randbytes(length))
    ctx = f"{journal}, {length} random bytes at {at} of {seg.name} ({size} bytes); {repro}"
    con = connections(db, backup)
    sh.assert_sync_recovers(con, db, backup, "the damage", ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_spool_of_another_format_version(connections, tmp_path, rng, repro, journal):
    """A spool left by another spoolvfs version (its segments carry another format number): the
    next open resyncs ONCE, says why in last_error, and later commits reach the backup without
    further errors. Appending into the old tail segment would make every later record unreadable
    too: one resync per batch until the segment rotated."""
    ctx = f"{journal}; {repro}"
    db, backup, con = open_with_rows(connections, tmp_path, rng, journal, 30)
    assert sh.spool_sync(con, 30000) == 1, f"setup: spool_sync = 1 [{ctx}]"
    spool = Path(sh.spool_status(con)["spool"])
    con.close()
    segs = segments(spool)
    assert segs, f"setup: expected segments in {spool} [{ctx}]"
    for seg in segs:  # bytes 8..12 of a segment header: its format version (little-endian)
        with open(seg, "r+b") as f:
            f.seek(8)
            f.write((1).to_bytes(4, "little"))
    con = connections(db, backup, journal_mode=journal, cache_size=20)
    write_some(con, rng, 10)
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 after reopening [{ctx}]"
    first = sh.spool_status(con)
    assert "format 1" in (first["last_error"] or ""), (
        f"expected last_error to name the other format, got {first['last_error']!r} [{ctx}]"
    )
    for _ in range(5):
        write_some(con, rng, 10)
        assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 [{ctx}]"
    later = sh.spool_status(con)
    assert (later["errors"], later["resyncs"]) == (first["errors"], first["resyncs"]), (
        f"expected no further losses or resyncs once the stream moved to a new segment: "
        f"{first} -> {later} [{ctx}]"
    )
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_spool_deleted_then_another_process_opens(procs, child_env, tmp_path, rng, repro, journal):
    """After `rm -rf` of the spool under process A, process B opens the database (it finds no
    spool, so it creates one) and both commit money transfers. Required, as everywhere: the
    backup read with plain SQLite at any moment passes quick_check and keeps the invariant (one
    committed state); both processes' spool_sync(30000) = 1 and the backup equals the source; and
    all processes agree on ONE active consumer (README: exactly one process applies)."""
    import sqlite3
    import threading

    from test_takeover import ACCOUNTS, BANK, TOTAL, Writer

    ctx = f"{journal}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    uri = sh.spool_uri_params(db, backup=backup)
    a = sh.DrivenChild(
        procs, child_env, uri, tmp_path / "a.stderr", journal_mode=journal, cache_size=20
    )
    a.sql(BANK)
    assert a.sync() == 1, f"expected the initial spool_sync = 1 [{ctx}]"
    remove_tree_in_use(Path(f"{db}-spool"))
    b = sh.DrivenChild(
        procs, child_env, uri, tmp_path / "b.stderr", journal_mode=journal, cache_size=20
    )

    stop, seen = threading.Event(), {"reads": 0, "bad": []}

    def read_backup():
        while not stop.is_set():
            try:
                c = sqlite3.connect(f"file:{backup}?mode=rw", uri=True, timeout=30)
                c.isolation_level = None
                c.execute("BEGIN")
                total = c.execute("SELECT sum(balance), count(*) FROM accounts").fetchone()
                check = c.execute("PRAGMA quick_check").fetchone()[0]
                c.execute("COMMIT")
                c.close()
                seen["reads"] += 1
                if total != (TOTAL, ACCOUNTS) or check != "ok":
                    seen["bad"].append(f"sum/count {total}, quick_check {check[:200]!r}")
            except sqlite3.Error as exc:
                seen["bad"].append(repr(exc)[:200])
            stop.wait(0.01)

    reader = threading.Thread(target=read_backup, daemon=True)
    reader.start()
    wa, wb = Writer(a, rng, after_stop=0), Writer(b, type(rng)(rng.random()), after_stop=0)
    wa.start()
    wb.start()
    time.sleep(3)
    wa.stop.set()
    wb.stop.set()
    wa.join(120)
    wb.join(120)
    assert wa.error is None and wb.error is None, (
        f"expected every transfer to succeed: {wa.error} {wb.error} [{ctx}]"
    )
    syncs = (a.sync(30000), b.sync(30000))
    stop.set()
    reader.join(60)
    st_a, st_b = a.status(), b.status()
    ctx += (
        f"; {wa.commits}+{wb.commits} transfers; consumers: "
        f"A(pid {a.pid}) says {st_a['consumer_pid']} here={st_a['consumer_here']}, "
        f"B(pid {b.pid}) says {st_b['consumer_pid']} here={st_b['consumer_here']}; "
        f"resyncs A {st_a['resyncs']} B {st_b['resyncs']}"
    )
    assert not seen["bad"], (
        f"expected every read of the backup to be one committed state; {len(seen['bad'])} of "
        f"{seen['reads']} reads were not, first: {seen['bad'][:3]} [{ctx}]"
    )
    assert syncs == (1, 1), f"expected spool_sync(30000) = 1 in both processes, got {syncs} [{ctx}]"
    report = sh.integrity_ok(backup)
    assert report == "ok", f"expected backup integrity ok, got {report[:300]} [{ctx}]"
    src, bak = sh.logical_dump(db), sh.logical_dump(backup)
    assert src == bak, (
        f"expected the backup to equal the source: {sh.describe_logical_diff(src, bak)} [{ctx}]"
    )
    assert (
        st_a["consumer_pid"] == st_b["consumer_pid"]
        and st_a["consumer_here"] != st_b["consumer_here"]
    ), f"expected exactly one active consumer that both processes name [{ctx}]"
    for child in (a, b):
        rc, err = child.close()
        assert rc == 0, f"expected a clean exit: {err[-1000:]} [{ctx}]"
