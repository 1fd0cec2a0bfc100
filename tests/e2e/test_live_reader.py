"""The money-transfer invariant, observed live on the backup by an unrelated reader process.

A writer process (tests/e2e/writer.py on apsw, or the C driver on the system SQLite) moves money
between accounts in transactions, so sum(balance) and count(*) are constant in every committed
state and counter.txn_no counts commits. Meanwhile a reader process opens the BACKUP again and
again with stdlib sqlite3 (plain unix VFS) and checks those invariants. This proves the backup is
always ONE committed state (never a mix of two, never torn, never going back in time) while it
visibly advances, and that it converges once the writer is done.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import spool_helpers as sh

HERE = Path(__file__).resolve().parent
ACCOUNTS = 400
WRITE_SECONDS = 4.0


def start_writer(procs, env, spool_writer_bin, kind, db, backup, journal, seed, init=True,
                 seconds=WRITE_SECONDS, mode="transfers"):
    """Start a transfers/inserts writer; returns its LineWatcher once it printed READY."""
    if kind == "python":
        args = [sys.executable, HERE / "writer.py", "--db", db, "--backup", backup,
                "--journal-mode", journal, "--mode", mode, "--accounts", ACCOUNTS,
                "--seconds", seconds, "--seed", seed] + (["--init"] if init else [])
    else:  # the C driver creates the schema when it is missing
        args = [spool_writer_bin, db, backup, journal, 10**9, mode, ACCOUNTS, seconds]
    env = dict(env, SPOOL_WRITER_SEED=str(seed))
    watcher = sh.LineWatcher(procs(args, env=env))
    line = watcher.wait_for(lambda s: s.startswith("READY"))
    assert line == "READY", f"{kind} writer: initial spool_sync timed out ({line})"
    return watcher


def start_reader(procs, backup, stop_file):
    return procs([sys.executable, HERE / "reader.py", "--backup", backup, "--accounts", ACCOUNTS,
                  "--total", ACCOUNTS * 1000, "--stop-file", stop_file])


def finish_writer(watcher, what):
    rc, lines, err = watcher.finish()
    assert rc == 0, f"{what} exited {rc}; tail {lines[-3:]}; stderr {err[-2000:]}"
    assert lines and lines[-1].startswith("SYNC 1"), f"{what}: final sync failed: {lines[-3:]}"
    return int(lines[-1].split("txns=")[1])


def committed_txns(kind: str, txns: int) -> int:
    """Transfers that committed: writer.py rolls back every 40th, the C driver none."""
    return txns - txns // 40 if kind == "python" else txns


def stop_reader(reader, stop_file) -> dict:
    stop_file.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, f"reader crashed: {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def assert_reader_stats(stats, repro, min_states=3, steps_back_allowed=0):
    """`steps_back_allowed`: how many times the backup may go back (once per kill -9 of the
    process applying to it: its open span rolls back; see backup::apply)."""
    assert stats["violations"] == 0, f"backup readers saw inconsistent states: {stats}; {repro}"
    assert len(stats["went_back"]) <= steps_back_allowed, (
        f"the backup went back in time more often than processes were killed: {stats}; {repro}"
    )
    assert stats["reads"] >= 20, f"too few successful reads of the backup: {stats}; {repro}"
    assert stats["states"] >= min_states, f"backup did not visibly advance: {stats}; {repro}"


@pytest.mark.parametrize(
    "kind,journal",
    [("python", "delete"), ("python", "wal"), ("c", "wal"), ("c", "truncate")],
)
def test_backup_readers_never_see_a_torn_state(
    procs, child_env, spool_writer_bin, connections, tmp_path, seed, repro, kind, journal
):
    """Zero invariant violations over >= 20 live reads of an advancing backup; then equality."""
    db, backup, stop = tmp_path / "bank.db", tmp_path / "bank.db-backup", tmp_path / "stop"
    writer = start_writer(procs, child_env, spool_writer_bin, kind, db, backup, journal, seed)
    reader = start_reader(procs, backup, stop)
    txns = finish_writer(writer, f"{kind} writer")
    stats = stop_reader(reader, stop)
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, f"{kind}/{journal}, {txns} txns, {stats}; {repro}")
    assert_reader_stats(stats, repro)
    assert sh.scalar(con, "SELECT sum(balance) FROM accounts") == ACCOUNTS * 1000
    assert sh.scalar(con, "SELECT txn_no FROM counter") == committed_txns(kind, txns)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_two_writer_processes_share_one_backup(
    procs, child_env, spool_writer_bin, connections, tmp_path, seed, repro, journal
):
    """Two processes writing one database through spool keep one consistent, converging backup."""
    db, backup, stop = tmp_path / "bank.db", tmp_path / "bank.db-backup", tmp_path / "stop"
    w1 = start_writer(procs, child_env, spool_writer_bin, "python", db, backup, journal, seed)
    w2 = start_writer(procs, child_env, spool_writer_bin, "python", db, backup, journal, seed + 1,
                      init=False)
    reader = start_reader(procs, backup, stop)
    committed = sum(committed_txns("python", finish_writer(w, "writer")) for w in (w1, w2))
    stats = stop_reader(reader, stop)
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, f"two writers, {journal}, {stats}; {repro}")
    assert_reader_stats(stats, repro)
    assert sh.scalar(con, "SELECT txn_no FROM counter") == committed, "lost transactions"


@pytest.mark.parametrize("reader_lib", ["apsw", "sqlite3"])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_reader_in_the_same_process_holds_the_apply_back(
    connections, tmp_path, repro, journal, reader_lib
):
    """An application that reads its backup in its own process (the same SQLite library as its
    writer, or another one) gets the isolation of any SQLite reader: while its read transaction is
    open no apply touches the backup, and it sees one state throughout. The consumer must never
    close a descriptor of the backup, which would drop the reader's POSIX lock."""
    import sqlite3
    import time

    import apsw

    ctx = f"{journal}, reader {reader_lib}; {repro}"
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode=journal)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    con.execute("INSERT INTO t(v) VALUES(randomblob(500))")
    assert sh.spool_sync(con) == 1, f"initial spool_sync [{ctx}]"
    if reader_lib == "apsw":
        reader = apsw.Connection(str(backup), flags=apsw.SQLITE_OPEN_READONLY)
    else:
        reader = sqlite3.connect(f"file:{backup}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    seen = reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
    for _ in range(20):
        con.execute("INSERT INTO t(v) VALUES(randomblob(700))")
    time.sleep(0.5)  # ample time for applies (group commit waits ~8 ms)
    st = sh.spool_status(con)
    again = reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
    assert again == seen, f"the reader's snapshot changed inside its transaction [{ctx}]"
    assert st["pending"] >= 1, f"an apply went ahead under an open reader: {st} [{ctx}]"
    # What waits is counted in spool bytes: at least the rows' own bytes, nowhere near the
    # segment's reserved size.
    pending_rows = st["captured"] - st["applied"]
    assert pending_rows * 700 <= st["pending_bytes"] <= pending_rows * 4 * 8192, (
        f"pending_bytes does not match {pending_rows} pending transactions: {st} [{ctx}]"
    )
    reader.execute("COMMIT")
    reader.close()
    sh.assert_backup_converged(con, db, backup, ctx)
