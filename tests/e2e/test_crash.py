"""kill -9 of a writer process at a random point, then recovery through spool.

The killed process may leave a hot rollback journal (a large transaction that already spilled
into the database file), committed WAL frames, a torn spool record, and a half-applied backup
batch. Reopening the source through spool and calling spool_sync must give a backup that passes
integrity_check and equals the recovered source (no committed transaction lost). With a reader
running across the crash, no reader may ever see a torn or mixed backup.
"""

from __future__ import annotations

import signal
import time

import pytest

import spool_helpers as sh
from test_live_reader import ACCOUNTS, assert_reader_stats, start_reader, start_writer, stop_reader


def kill_after_progress(watcher, rng, max_lines: int) -> int:
    """Wait for 1..max_lines progress lines (50 transactions each), then SIGKILL."""
    n = rng.randint(1, max_lines)
    for _ in range(n):
        watcher.wait_for(lambda s: s.startswith("txn "))
    time.sleep(rng.uniform(0, 0.05))
    watcher.proc.send_signal(signal.SIGKILL)
    rc = watcher.proc.wait(timeout=30)
    assert rc == -signal.SIGKILL, f"writer ended on its own (rc={rc}) before the kill"
    return n


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("attempt", [1, 2])
def test_kill9_inserting_writer_then_reopen(
    procs, child_env, spool_writer_bin, connections, tmp_path, rng, seed, repro, journal, attempt
):
    """After kill -9 mid-workload (spilling transactions), reopen + sync gives an exact backup."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    w = start_writer(procs, child_env, spool_writer_bin, "c", db, backup, journal, seed,
                     seconds=120, mode="inserts")
    n = kill_after_progress(w, rng, 6)
    ctx = f"{journal}, killed after {n * 50}+ txns; {repro}"
    con = connections(db, backup)
    assert sh.scalar(con, "SELECT count(*) FROM t") > 0, ctx
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


@pytest.mark.parametrize("kind,journal", [("python", "delete"), ("c", "wal")])
def test_kill9_during_live_reads_keeps_backup_consistent(
    procs, child_env, spool_writer_bin, connections, tmp_path, rng, seed, repro, kind, journal
):
    """Readers of the backup see only consistent states before, across and after a kill -9."""
    db, backup, stop = tmp_path / "bank.db", tmp_path / "bank.db-backup", tmp_path / "stop"
    w = start_writer(procs, child_env, spool_writer_bin, kind, db, backup, journal, seed,
                     seconds=120)
    reader = start_reader(procs, backup, stop)
    kill_after_progress(w, rng, 20)
    # a second writer picks up where the dead one stopped
    w2 = start_writer(procs, child_env, spool_writer_bin, kind, db, backup, journal, seed + 1,
                      init=False, seconds=2)
    rc, lines, err = w2.finish()
    assert rc == 0 and lines[-1].startswith("SYNC 1"), f"restarted writer: {lines[-3:]} {err}"
    stats = stop_reader(reader, stop)
    con = connections(db, backup)
    ctx = f"{kind}/{journal} kill -9, {stats}; {repro}"
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)
    # One kill: the span the dead process had open may take the backup back once, to its start.
    assert_reader_stats(stats, repro, steps_back_allowed=1)
    assert sh.scalar(con, "SELECT sum(balance) FROM accounts") == ACCOUNTS * 1000


def test_last_close_does_not_wait_out_a_hot_journal(procs, child_env, connections, tmp_path):
    """A process killed mid-transaction leaves a hot journal and pages of its transaction in the
    database file. The survivor's consumer must resync, and its resync has to wait until someone
    rolls the journal back. The survivor's last close cannot be that someone (its connection is
    gone), so the close must end at once, not after `spool_drain_ms`. The resync is left pending,
    and the next open rolls the journal back and brings the backup exactly to the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    journal, log = tmp_path / "app.db-journal", tmp_path / "survivor.log"
    drain_ms = 120_000
    uri = sh.spool_uri_params(db, backup=backup, spool_drain_ms=drain_ms)
    survivor = sh.DrivenChild(
        procs, child_env, uri, tmp_path / "survivor.err", log=str(log), journal_mode="delete"
    )
    survivor.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    survivor.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
        "INSERT INTO t SELECT i, randomblob(1000) FROM n"
    )
    assert survivor.sync() == 1

    # A writer with a tiny page cache spills its open transaction into the file, then dies.
    victim = sh.DrivenChild(
        procs,
        child_env,
        sh.spool_uri_params(db, backup=backup),
        tmp_path / "victim.err",
        journal_mode="delete",
        cache_size=5,
    )
    victim.sql("BEGIN")
    victim.sql("UPDATE t SET v = randomblob(1000)")
    assert journal.exists() and journal.read_bytes()[:1] not in (b"", b"\0"), "no hot journal"
    victim.kill()

    sh.wait_until(
        lambda: survivor.status()["state"] == "resyncing",
        timeout=60,
        what="the survivor's consumer resyncing after the victim's death",
    )
    started = time.monotonic()
    rc, err = survivor.close(timeout=drain_ms / 1000 + 60)
    took = time.monotonic() - started
    assert rc == 0, err[-2000:]
    # Not a timing measurement: the broken behaviour waits the whole 120 s drain.
    assert took < drain_ms / 2000, f"the last close waited {took:.1f} s for the hot journal"
    assert journal.exists(), "the hot journal vanished without an opener rolling it back"
    assert "resync left for the next open" in log.read_text(), log.read_text()[-2000:]

    con = connections(db, backup)  # its first read rolls the hot journal back
    assert sh.scalar(con, "SELECT count(*) FROM t") == 300
    sh.assert_backup_converged(con, db, backup, "after the deferred resync", allow_last_error=True)
