"""Several processes writing one database through spool, deterministically interleaved.

The design gives all writers of a database one total order (sequence numbers taken under the
database's write lock) and one consumer per backup. These tests interleave commits of two
processes statement by statement, so a failure names the exact interleaving, and repeat it a few
times because the consumers' timing varies from run to run.
"""

from __future__ import annotations

import json
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
