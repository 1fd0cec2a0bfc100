"""Seeding: the first open through spool of a database that has no (or a foreign) backup.

Proves that the initial copy is exact for databases written without spool, including committed
frames that still sit only in the -wal file (left by an exited process, or by a plain process
that still has the database open), that it replaces a backup of another database, and that it
stays exact while the application keeps writing during the copy.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

import spool_helpers as sh
from conftest import STEPS

# Runs in a child process with the plain (system) SQLite: writes ROWS rows in several
# transactions. MODE=exit leaves the process with os._exit (no close, no checkpoint);
# MODE=hold keeps the connection open until stdin closes.
PLAIN_WRITER = r"""
import os, random, sqlite3, sys
path, journal, mode = sys.argv[1], sys.argv[2], sys.argv[4]
rows, seed = int(sys.argv[3]), int(sys.argv[5])
rng = random.Random(seed)
con = sqlite3.connect(path, isolation_level=None)
assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
con.execute("PRAGMA wal_autocheckpoint=0")
con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
con.execute("CREATE INDEX t_k ON t(k)")
for i in range(rows):
    if i % 7 == 0:
        con.execute("BEGIN")
    blob = rng.randbytes(int(10 ** rng.uniform(1, 5)))
    con.execute("INSERT INTO t(k, v) VALUES(?, ?)", (rng.randint(0, 99), blob))
    if i % 7 == 6 or i == rows - 1:
        con.execute("COMMIT")
con.execute("DELETE FROM t WHERE k < 10")
print("WRITTEN", con.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
if mode == "exit":
    os._exit(0)
sys.stdin.read()
con.close()
"""


def run_plain_writer(procs, db, journal, rows, mode, seed):
    """Returns (process, row count it left committed) once the child wrote everything."""
    p = procs([sys.executable, "-c", PLAIN_WRITER, db, journal, rows, mode, seed],
              stdin=subprocess.PIPE)
    line = p.stdout.readline().split()
    assert line and line[0] == "WRITTEN", f"plain writer failed: {p.stderr.read()}"
    return p, int(line[1])


def test_seed_rollback_db_written_without_spool(procs, connections, tmp_path, seed, repro):
    """A DELETE-mode database made by plain SQLite is copied exactly on first spool open."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    p, rows = run_plain_writer(procs, db, "delete", 300, "exit", seed)
    p.wait()
    assert not backup.exists()
    con = connections(db, backup)
    assert sh.scalar(con, "SELECT count(*) FROM t") == rows
    sh.assert_backup_converged(con, db, backup, repro)


def test_seed_wal_frames_left_by_exited_process(procs, connections, tmp_path, seed, repro):
    """Committed frames only in the -wal (writer exited without checkpoint) reach the backup."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    p, rows = run_plain_writer(procs, db, "wal", 300, "exit", seed)
    p.wait()
    wal = tmp_path / "app.db-wal"
    assert wal.exists() and wal.stat().st_size > 32, "test setup: expected frames in the WAL"
    con = connections(db, backup)
    assert sh.scalar(con, "SELECT count(*) FROM t") == rows
    assert sh.spool_sync(con) == 1
    assert sh.scalar(sh.ro_connect(backup), "SELECT count(*) FROM t") == rows, (
        f"backup misses rows committed in the pre-existing WAL; {repro}"
    )
    sh.assert_backup_converged(con, db, backup, repro)


def test_seed_wal_while_plain_process_holds_it_open(procs, connections, tmp_path, seed, repro):
    """Seeding works while another (non-spool) process has the WAL database open."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    p, rows = run_plain_writer(procs, db, "wal", 300, "hold", seed)
    try:
        assert (tmp_path / "app.db-wal").stat().st_size > 32
        con = connections(db, backup)
        assert sh.spool_sync(con) == 1
        ro = sh.ro_connect(backup)
        assert sh.scalar(ro, "SELECT count(*) FROM t") == rows, f"backup incomplete; {repro}"
        ro.close()
        sh.assert_backup_converged(con, db, backup, repro)
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def test_seed_replaces_backup_of_another_database(connections, tmp_path, rng, repro):
    """A file at the backup path that belongs to another database is replaced by the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    other = sqlite3.connect(backup)
    other.execute("CREATE TABLE unrelated(x)")
    other.executemany("INSERT INTO unrelated VALUES(?)", [(rng.randbytes(5000),)] * 50)
    other.commit()
    other.close()
    plain = sqlite3.connect(db)
    plain.execute("CREATE TABLE t(a)")
    plain.execute("INSERT INTO t VALUES('source')")
    plain.commit()
    plain.close()
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, repro)
    assert "unrelated" not in sh.logical_dump(backup)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_seed_while_application_keeps_writing(connections, tmp_path, rng, repro, journal):
    """Writes that land while the initial copy of a large database runs are not lost."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    plain = sqlite3.connect(db)
    plain.execute(f"PRAGMA journal_mode={journal}")
    plain.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v BLOB)")
    plain.executemany("INSERT INTO big(v) VALUES(?)", [(rng.randbytes(4000),) for _ in range(6000)])
    plain.commit()
    plain.close()  # ~25 MB to copy
    con = connections(db, backup, cache_size=10)
    wl = sh.Workload(con, rng)
    for _ in range(STEPS):
        wl.step()
        if rng.random() < 0.3:
            con.execute(
                "UPDATE big SET v = ? WHERE id = ?", (rng.randbytes(4000), rng.randint(1, 6000))
            )
    sh.assert_backup_converged(con, db, backup, f"{journal}; {repro}")
