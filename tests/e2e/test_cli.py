"""The system sqlite3 shell (3.40.1 on Debian 12) as the host: an older SQLite than apsw's.

Proves that `.load` finds the entry point from the file name and works on an old host's API
table, that `.open` with a vfs=spool URI uses the shim (`.vfsname`), that the SQL functions are
on the connection `.open` made, and that the backup matches after spool_sync and after the shell
exits without any sync (the last close drains).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import spool_helpers as sh

SQLITE3 = shutil.which("sqlite3")


def run_shell(lib, db, backup, script: str) -> list[str]:
    """Run `script` in `sqlite3 -bail :memory:` after .load and .open; return stdout lines."""
    assert SQLITE3, "the sqlite3 command-line shell is not installed"
    stem = str(lib)[: -len(".so")] if str(lib).endswith(".so") else str(lib)
    uri = sh.spool_uri(db, backup)
    proc = subprocess.run(
        [SQLITE3, "-bail", "-batch", ":memory:", "-cmd", f".load {stem}", "-cmd", f".open '{uri}'"],
        input=script, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and not proc.stderr, (
        f"sqlite3 exited {proc.returncode}: {proc.stderr.strip()}"
    )
    return proc.stdout.splitlines()


def shell_version() -> str:
    return subprocess.run([SQLITE3, "-version"], capture_output=True, text=True).stdout.split()[0]


INSERTS = """
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, s TEXT);
CREATE INDEX t_s ON t(s);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO t(v, s) SELECT randomblob(abs(random()) % 30000), hex(randomblob(8)) FROM n;
BEGIN; UPDATE t SET v = randomblob(100) WHERE id % 3 = 0; DELETE FROM t WHERE id % 5 = 0; COMMIT;
BEGIN; DELETE FROM t; ROLLBACK;
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_cli_load_open_write_sync(spoolvfs, tmp_path, journal):
    """.load/.open in the 3.40 shell; spool_sync returns 1, status is JSON, backup matches."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    out = run_shell(spoolvfs, db, backup, f"""
.vfsname
PRAGMA journal_mode={journal};
{INSERTS}
SELECT spool_sync(30000);
SELECT spool_status();
SELECT spool_version();
""")
    assert out[0].startswith("spool"), f".vfsname printed {out[0]!r} (shell {shell_version()})"
    assert out[1] == journal, f"journal_mode: {out[1]!r}"
    assert out[2] == "1", f"spool_sync(30000) returned {out[2]!r}"
    status = json.loads(out[3])
    sh.check_status_shape(status)
    assert status["last_error"] is None and status["captured"] == status["applied"], status
    assert out[4].strip(), "spool_version() is empty"
    sh.assert_closed_files_match(db, backup, wal=journal == "wal", context=f"shell {journal}")


def test_cli_exit_without_sync_drains(spoolvfs, tmp_path):
    """The shell exits right after committing ~30 MB: the last close drains into the backup."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    run_shell(spoolvfs, db, backup, INSERTS)
    sh.assert_closed_files_match(db, backup, wal=False, context="exit without spool_sync")


def test_cli_functions_on_loading_connection(spoolvfs, tmp_path):
    """spool_version() works on the :memory: connection that ran .load (before any .open)."""
    stem = str(spoolvfs)[: -len(".so")]
    proc = subprocess.run(
        [SQLITE3, "-bail", ":memory:", f".load {stem}", "SELECT spool_version();", ".vfslist"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].strip(), "spool_version() is empty"
    names = [ln.split('"')[1] for ln in lines if ln.startswith("vfs.zName")]
    current = [ln.split('"')[1] for ln in lines if ln.startswith("vfs.zName") and "CURRENT" in ln]
    assert "spool" in names, f"spool is not registered: {names}"
    assert current == ["unix"], f"the default VFS changed to {current}"
