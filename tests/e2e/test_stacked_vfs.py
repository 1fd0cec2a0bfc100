"""A VFS layered above spool (the application's own shim: tracing, checksums, SQLite's test VFS).

SQLite's pager then holds the upper shim's file objects, not spool's. A WAL belongs to the
connection whose pager opens it, which spool used to find from the pager's database file: under
such a shim it could not, and the database could not be used in WAL mode at all ("unable to open
database file"; found running SQLite's own wal.test through spool). Spool now asks the pager's
file for spool's own beneath it with a file-control opcode of its own, which a shim forwards like
any opcode it does not know, and captures the WAL in full. A shim that answers only SQLite's own
opcodes hides spool's file: its WAL is passed through uncaptured and reported, and its commits
reach the backup the way writes made without spoolvfs do (found by the consumer, repaired by a
resync). Rollback modes keep full capture either way: every call they need reaches spool's own
database file.

The upper shim is c/passthru_ext.c: the bench's forwarding-only VFS, registered over `spool`, with
a switch that makes it refuse foreign file-control opcodes.
"""

from __future__ import annotations

import subprocess

import apsw
import pytest

import spool_helpers as sh
from conftest import C_BUILD, C_DIR

STACKED = "passthru-over-spool"


@pytest.fixture(scope="session")
def stacked_vfs(spoolvfs) -> str:
    """Registers the forwarding shim over `spool` in this process (after spoolvfs is loaded)."""
    src, out = C_DIR / "passthru_ext.c", C_BUILD / "passthru_ext.so"
    C_BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", out, src],
        check=True,
    )
    loader = sh.load_spoolvfs()
    loader.load_extension(str(out), "sqlite3_passthruext_init")
    return STACKED


@pytest.fixture
def shim_refusing_foreign_fcntl(stacked_vfs):
    """The shim answers SQLITE_NOTFOUND to opcodes that are not SQLite's own while the test runs."""
    loader = sh.load_spoolvfs()
    assert sh.scalar(loader, "SELECT passthru_refuse_foreign_fcntl(1)") == 1
    yield stacked_vfs
    sh.scalar(loader, "SELECT passthru_refuse_foreign_fcntl(0)")


def open_stacked(db, backup, journal, locking=None):
    con = apsw.Connection(
        f"file:{sh._q(db)}?vfs={STACKED}&backup={sh._q(backup)}",
        flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
    )
    con.set_busy_timeout(30000)
    if locking:
        sh.set_pragma(con, "locking_mode", locking)
    sh.set_pragma(con, "journal_mode", journal)
    return con


@pytest.mark.parametrize(
    "journal, locking",
    [
        ("delete", None),
        ("truncate", None),
        ("persist", None),
        ("wal", None),
        ("delete", "exclusive"),
        ("wal", "exclusive"),
    ],
)
def test_vfs_layered_above_spool(stacked_vfs, tmp_path, rng, repro, journal, locking):
    """Randomized writes through a shim over spool: the database works as with spool alone, and
    the backup converges after every round through capture alone, in WAL mode too: no error, no
    resync beyond the first open's."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = open_stacked(db, backup, journal, locking)
    work = sh.Workload(con, rng, vacuum=journal != "wal")
    for rnd in range(3):
        work.run(60)
        ctx = f"{journal} ({locking or 'normal'} locking) through {STACKED}, round {rnd}; {repro}"
        st = sh.assert_backup_converged(con, db, backup, ctx)
        assert st["resyncs"] <= 1 and st["errors"] == 0, (
            f"capture through the shim fell back to resyncs: {st} [{ctx}]"
        )
    con.close()
    sh.assert_closed_files_match(
        db, backup, journal == "wal" or locking == "exclusive", f"{journal} after close; {repro}"
    )


def test_wal_under_a_shim_that_hides_spools_file_is_reported_and_resynced(
    shim_refusing_foreign_fcntl, connections, tmp_path, rng, repro
):
    """A shim that does not forward foreign file-control opcodes: spool cannot find the WAL's
    connection, passes the WAL through uncaptured, says so, and the backup still converges (by
    resyncs). Such a shim also hides spool from the spool_* functions of its own connections, so
    the test watches through a second connection opened with spool directly (same database state
    in this process)."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = open_stacked(db, backup, "wal")
    with pytest.raises(apsw.SQLError, match="not opened with vfs=spool"):
        sh.spool_status(con)
    watch = connections(db, backup, journal_mode="wal")
    work = sh.Workload(con, rng, vacuum=False)
    for rnd in range(2):
        work.run(60)
        ctx = f"wal through {STACKED} refusing foreign opcodes, round {rnd}; {repro}"
        st = sh.assert_backup_converged(watch, db, backup, ctx, allow_last_error=True)
        # Reported at the WAL's open ("... not captured ..."); the consumer's later finding
        # ("... without spoolvfs ...") may have replaced it as the last error since.
        said = st["last_error"] or ""
        reported = "not captured" in said or "without spoolvfs" in said
        assert st["errors"] >= 1 and reported, f"unreported: {st} [{ctx}]"
    con.close()
    watch.close()
    sh.assert_closed_files_match(db, backup, True, f"wal after close; {repro}")
