"""Deterministic reproducers: pages written by work that is later undone must never reach the
backup.

With a tiny page cache SQLite writes dirty pages before COMMIT (to the database file in rollback
modes, as WAL frames in WAL mode). ROLLBACK, or ROLLBACK TO a savepoint, then abandons them; in
WAL mode no write marks that, the abandoned frames simply get overwritten later, or not. Each
test here spills a transaction that zeroes every row, undoes it, commits something small, and
checks that the backup has no zeroed row and equals the source.
"""

from __future__ import annotations

import pytest

import spool_helpers as sh

ROWS = 200


def make_table(con):
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    con.execute("BEGIN")
    for _ in range(ROWS):
        con.execute("INSERT INTO t(v) VALUES(randomblob(500))")
    con.execute("COMMIT")
    assert sh.spool_sync(con) == 1


def zeroed_rows_in_backup(backup) -> int:
    ro = sh.ro_connect(backup)
    try:
        return sh.scalar(ro, "SELECT count(*) FROM t WHERE v = zeroblob(500)")
    finally:
        ro.close()


def check(con, db, backup, what):
    assert sh.spool_sync(con) == 1
    assert sh.scalar(con, "SELECT count(*) FROM t WHERE v = zeroblob(500)") == 0  # test sanity
    report = sh.integrity_ok(backup)
    assert report == "ok", f"{what}: backup integrity_check: {report}"
    zeroed = zeroed_rows_in_backup(backup)
    assert zeroed == 0, f"{what}: the backup holds {zeroed} rows of the undone UPDATE"
    sh.assert_backup_converged(con, db, backup, what)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_savepoint_rollback_after_spill(connections, tmp_path, journal):
    """SAVEPOINT; UPDATE (spills); ROLLBACK TO; RELEASE: nothing of the UPDATE is in the backup."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode=journal, cache_size=10)
    make_table(con)
    con.execute("SAVEPOINT a; UPDATE t SET v = zeroblob(500); ROLLBACK TO a; RELEASE a")
    check(con, db, backup, f"{journal}: SAVEPOINT/UPDATE/ROLLBACK TO/RELEASE")


@pytest.mark.parametrize("locking", ["normal", "exclusive"])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_rollback_after_spill_then_commit(connections, tmp_path, journal, locking):
    """BEGIN; UPDATE (spills); ROLLBACK; then a one-row commit: the backup has only the row."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, locking_mode=locking, journal_mode=journal, cache_size=10)
    make_table(con)
    con.execute("BEGIN; UPDATE t SET v = zeroblob(500); ROLLBACK")
    con.execute("INSERT INTO t(v) VALUES(1)")
    check(con, db, backup, f"{journal}, locking_mode={locking}: spilled ROLLBACK, then commit")


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_rollback_in_another_process_then_commits(procs, child_env, connections, tmp_path, journal):
    """Process B spills and rolls back, A commits, B commits: the backup stays exact."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    a = connections(db, backup, journal_mode=journal, cache_size=10)
    make_table(a)
    b = sh.SqlChild(procs, child_env, db, backup, cache_size=10)
    b.sql("BEGIN; UPDATE t SET v = zeroblob(500); ROLLBACK")
    a.execute("INSERT INTO t(v) VALUES(1)")
    b.sql("INSERT INTO t(v) VALUES(2)")
    assert b.sql("SELECT spool_sync(60000)") == [[1]]
    b.close()
    check(a, db, backup, f"{journal}: ROLLBACK in process B between commits of A and B")
