"""Loading contract: entry point, permanence, idempotence, registration, auto-extension.

Each check runs in a fresh Python process, so it sees the extension's first load exactly as an
application would (and a crash there cannot take the suite down).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import spool_helpers as sh


def run_python(code: str, env) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.stdout


def test_load_registers_vfs_not_default_and_functions(child_env, tmp_path):
    """After one load: 'spool' is registered but not default; functions on new connections."""
    out = run_python(f"""
        import apsw, os
        loader = apsw.Connection(":memory:")
        loader.enable_load_extension(True)
        loader.load_extension(os.environ["SPOOLVFS_LIB"], "sqlite3_spoolvfs_init")
        names = apsw.vfs_names()
        assert "spool" in names, names
        assert names[0] != "spool", f"spool became the default VFS: {{names}}"
        assert names.count("spool") == 1, names
        v1 = loader.execute("SELECT spool_version()").fetchone()[0]
        plain = apsw.Connection({str(tmp_path / "plain.db")!r})   # default VFS: auto-extension
        v2 = plain.execute("SELECT spool_version()").fetchone()[0]
        assert isinstance(v1, str) and v1 and v1 == v2, (v1, v2)
        print("ok")
    """, child_env)
    assert out.strip() == "ok"


def test_load_is_permanent_and_idempotent(child_env, tmp_path):
    """Closing the loading connection keeps the VFS working; a second load is harmless."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    out = run_python(f"""
        import apsw, os, spool_helpers as sh
        lib = os.environ["SPOOLVFS_LIB"]
        first = apsw.Connection(":memory:")
        first.enable_load_extension(True)
        first.load_extension(lib, "sqlite3_spoolvfs_init")
        first.close()                       # SQLITE_OK_LOAD_PERMANENTLY: nothing may dangle
        again = apsw.Connection(":memory:")
        again.enable_load_extension(True)
        again.load_extension(lib)           # entry point derived from the file name
        assert apsw.vfs_names().count("spool") == 1, apsw.vfs_names()
        again.close()
        flags = apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        con = apsw.Connection(sh.spool_uri({str(db)!r}, {str(backup)!r}), flags=flags)
        con.execute("CREATE TABLE x(a); INSERT INTO x VALUES(42)")
        assert con.execute("SELECT spool_sync(60000)").fetchone()[0] == 1
        con.close()
        print("ok")
    """, child_env)
    assert out.strip() == "ok"
    assert sh.logical_dump(backup)["x"] == [(42,)]


def test_plain_connections_are_untouched(child_env, tmp_path):
    """A database opened without vfs=spool gets no backup and no spool, whatever it does."""
    db = tmp_path / "plain.db"
    run_python(f"""
        import apsw, os
        loader = apsw.Connection(":memory:")
        loader.enable_load_extension(True)
        loader.load_extension(os.environ["SPOOLVFS_LIB"], "sqlite3_spoolvfs_init")
        con = apsw.Connection({str(db)!r})
        con.execute("PRAGMA journal_mode=wal; CREATE TABLE x(a); INSERT INTO x VALUES(1)")
        con.close()
    """, child_env)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.db"]
