"""Several processes writing one database through spool, deterministically interleaved.

The design gives all writers of a database one total order (sequence numbers taken under the
database's write lock) and one consumer per backup. These tests interleave commits of two
processes statement by statement, so a failure names the exact interleaving, and repeat it a few
times because the consumers' timing varies from run to run.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

import spool_helpers as sh

ROUNDS = 3


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_alternating_commits_from_two_processes(procs, child_env, connections, tmp_path, journal):
    """A commits, B (opened later) commits, A commits, ...: the backup equals the source."""
    for rnd in range(ROUNDS):
        d = tmp_path / f"round{rnd}"
        d.mkdir()
        db, backup = d / "app.db", d / "app.db-backup"
        a = connections(db, backup, journal_mode=journal)
        a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v BLOB)")
        a.execute("INSERT INTO t(who, v) VALUES('seed', randomblob(500))")
        assert sh.spool_sync(a) == 1
        b = sh.SqlChild(procs, child_env, db, backup)
        for i in range(3):
            a.execute("INSERT INTO t(who, v) VALUES('a', randomblob(700))")
            b.sql("INSERT INTO t(who, v) VALUES('b', randomblob(700))")
        assert b.sql("SELECT spool_sync(60000)") == [[1]]
        b.close()
        sh.assert_backup_converged(a, db, backup, f"{journal}, round {rnd + 1}/{ROUNDS}")
        a.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_second_process_sees_same_status_paths(procs, child_env, connections, tmp_path, journal):
    """Both processes report the same db/backup/spool and both can sync the other's commits."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    a = connections(db, backup, journal_mode=journal)
    a.execute("CREATE TABLE t(x)")
    b = sh.SqlChild(procs, child_env, db, backup)
    b.sql("INSERT INTO t VALUES('from b')")
    # A's sync covers everything committed before the call, by any process.
    assert sh.spool_sync(a) == 1
    assert sh.logical_dump(backup)["t"] == [("from b",)]
    sb = json.loads(b.sql("SELECT spool_status()")[0][0])
    sa = sh.spool_status(a)
    for key in ("db", "backup", "spool"):
        assert Path(sa[key]).resolve() == Path(sb[key]).resolve(), (key, sa, sb)
    b.close()


#: Offset of the control file's `consumer_parked` word (src/spool/control.rs).
CONSUMER_PARKED_OFFSET = 2056
ANSWER_BELL_OFFSET = 2064  # u32
SYNC_WAIT_SLOTS_OFFSET = 2080  # 16 words: deadline << 16 | tag, or 0 when free
SYNC_WAIT_SLOTS = 16


def control_word(spool_dir: Path, offset: int, size: int = 8) -> int:
    raw = (spool_dir / "control").read_bytes()
    return int.from_bytes(raw[offset : offset + size], "little")


def sync_wait_deadlines_ms(spool_dir: Path) -> list[int]:
    """Deadlines of the taken `spool_sync` wait slots, in ms on CLOCK_MONOTONIC (which
    time.monotonic() reads too)."""
    slots = (
        control_word(spool_dir, SYNC_WAIT_SLOTS_OFFSET + 8 * i) for i in range(SYNC_WAIT_SLOTS)
    )
    return [v >> 16 for v in slots if v]


def consumer_parked(spool_dir: Path) -> bool:
    return control_word(spool_dir, CONSUMER_PARKED_OFFSET) != 0


def marker_in_backup(backup: Path, marker: str) -> bool:
    try:
        con = sh.ro_connect(backup)
        try:
            return con.execute("SELECT count(*) FROM t WHERE v = ?", (marker,)).fetchone()[0] == 1
        finally:
            con.close()
    except sqlite3.Error:
        return False


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_process_wakes_the_parked_consumer(procs, fault_env, tmp_path, journal):
    """A's consumer is active and parked (fault build: it sleeps 120 s unless rung). B's commit,
    and then B's spool_sync, must each wake it through the control file's doorbell: the marker
    must reach the backup long before A's own timer would have looked. Before the doorbell was
    shared, only in-process seals woke a parked consumer; another process's waited for a tick."""
    Path(fault_env["SPOOLVFS_FAULTS_FILE"]).write_text("parked_sleeps_long\n")
    db, backup, spool = tmp_path / "app.db", tmp_path / "app.db-backup", tmp_path / "app.db-spool"
    uri = sh.spool_uri_params(db, backup=backup, spool=spool)
    a = sh.DrivenChild(procs, fault_env, uri, tmp_path / "a.err", journal_mode=journal)
    a.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    assert a.sync() == 1
    b = sh.DrivenChild(procs, fault_env, uri, tmp_path / "b.err", journal_mode=journal)
    # B's open rang the bell: wait until A's consumer has gone back to its long sleep.
    sh.wait_until(lambda: consumer_parked(spool), what="A's consumer parked")
    b.sql("INSERT INTO t(v) VALUES('from b')")
    sh.wait_until(
        lambda: marker_in_backup(backup, "from b"),
        timeout=60,
        what="B's row in the backup while A's consumer is parked",
    )
    # A request with nothing left to apply: only a ring can get A's consumer to answer it.
    sh.wait_until(lambda: consumer_parked(spool), what="A's consumer parked again")
    assert b.sync(60_000) == 1
    st = a.status()
    assert st["consumer_here"] and st["state"] != "failing", st
    b.close()
    a.converged(db, backup, journal)
    a.close()


def test_a_killed_sync_callers_registration_expires_with_its_timeout(procs, fault_env, tmp_path):
    """Fault build: B calls spool_sync(3000) while every apply fails (backup_eio), so it waits,
    registered in the control file, and is killed there: its registration is never undone. Once
    its timeout has passed, A's consumer must apply new commits without ringing the answer bell
    (nobody can be asleep on it). Before registrations carried a deadline, the dead caller's count
    made the consumer ring after every step for as long as the spool lived."""
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    db, backup, spool = tmp_path / "app.db", tmp_path / "app.db-backup", tmp_path / "app.db-spool"
    uri = sh.spool_uri_params(db, backup=backup, spool=spool)
    a = sh.DrivenChild(procs, fault_env, uri, tmp_path / "a.err", journal_mode="wal")
    a.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    assert a.sync(60_000) == 1
    assert sync_wait_deadlines_ms(spool) == [], "A's sync returned: its slot is free"
    b = sh.DrivenChild(procs, fault_env, uri, tmp_path / "b.err", journal_mode="wal")
    faults.write_text("backup_eio\n")
    b.sql("INSERT INTO t(v) VALUES('from b')")
    b.proc.stdin.write("SELECT spool_sync(3000)\n")  # no reply is read: B is killed waiting
    b.proc.stdin.flush()
    (until_ms,) = sh.wait_until(lambda: sync_wait_deadlines_ms(spool), what="B registered")
    left_ms = until_ms - time.monotonic() * 1000
    assert 0 < left_ms <= 3_100, f"B's deadline is {left_ms:.0f} ms away, not its timeout"
    b.kill()
    faults.write_text("")
    assert sync_wait_deadlines_ms(spool) == [until_ms], "the killed caller keeps its slot"
    time.sleep(max(0.0, until_ms / 1000 - time.monotonic()) + 0.05)
    bell = control_word(spool, ANSWER_BELL_OFFSET, 4)
    for i in range(5):
        a.sql(f"INSERT INTO t(v) VALUES('after {i}')")
        sh.wait_until(
            lambda i=i: marker_in_backup(backup, f"after {i}"), what=f"commit {i} applied"
        )
    assert marker_in_backup(backup, "from b")
    assert control_word(spool, ANSWER_BELL_OFFSET, 4) == bell, (
        "the consumer rang the answer bell for a caller that died and whose timeout has passed"
    )
    a.converged(db, backup, "wal")
    a.close()


def test_a_sync_in_another_process_is_woken_by_its_answer(procs, fault_env, tmp_path):
    """Fault build: a spool_sync caller sleeps 120 s between looks unless the consumer rings its
    answer bell, and A's parked consumer sleeps 120 s unless rung. B's spool_sync (B's consumer
    is passive) and A's own must return 1 long before their 60 s timeout: only the answer ring,
    from A's consumer to the caller in whichever process, wakes the caller early (a missed ring
    sleeps until the timeout, then finds the answer). The bound times nothing: it tells a wake-up
    (milliseconds) from the 60 s sleep. Before the answer bell, callers elsewhere polled the
    control file every 5 ms."""
    Path(fault_env["SPOOLVFS_FAULTS_FILE"]).write_text("parked_sleeps_long\nanswer_waits_long\n")
    db, backup, spool = tmp_path / "app.db", tmp_path / "app.db-backup", tmp_path / "app.db-spool"
    uri = sh.spool_uri_params(db, backup=backup, spool=spool)
    a = sh.DrivenChild(procs, fault_env, uri, tmp_path / "a.err", journal_mode="wal")
    a.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    assert a.sync(60_000) == 1
    b = sh.DrivenChild(procs, fault_env, uri, tmp_path / "b.err", journal_mode="wal")
    for who, child in (("b", b), ("a", a), ("b again", b)):
        sh.wait_until(lambda: consumer_parked(spool), what="A's consumer parked")
        child.sql(f"INSERT INTO t(v) VALUES('from {who}')")
        started = time.monotonic()
        assert child.sync(60_000) == 1, who
        slept = time.monotonic() - started
        assert slept < 30, f"{who}: spool_sync took {slept:.1f} s: the answer did not ring"
        assert marker_in_backup(backup, f"from {who}")
    st = a.status()
    assert st["consumer_here"] and st["state"] != "failing", st
    assert not b.status()["consumer_here"]
    b.close()
    a.converged(db, backup, "wal")
    a.close()
