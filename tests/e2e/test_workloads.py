"""Randomized workloads through the spool VFS, one case per journal/locking/pragma variant.

Each case proves that after `spool_sync(60000)` the backup is a valid database (integrity_check)
with the source's logical content and the source's bytes: identical files for rollback-journal
sources in normal locking mode, identical pages except the page-1 header fields the contract
exempts for WAL sources (after a TRUNCATE checkpoint) and for locking_mode=EXCLUSIVE. It checks
halfway through the workload and again at the end, plus spool_status() shape and counters.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

import spool_helpers as sh
from conftest import STEPS


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    journal: str
    synchronous: str = "full"
    cache_size: int | None = None  # tiny caches spill dirty pages mid-transaction
    locking: str = "normal"
    mmap_size: int = 0
    auto_vacuum: str | None = None
    page_sizes: tuple[int, ...] = ()  # PRAGMA page_size=N; VACUUM during the workload
    journal_size_limit: int | None = None
    switch_modes: bool = False  # alternate WAL <-> DELETE between workload chunks


CASES = [
    Case("delete-full-spill", "delete", "full", cache_size=10),
    Case("delete-normal", "delete", "normal"),
    Case("delete-sync-off", "delete", "off", cache_size=10),
    Case("truncate-full-spill", "truncate", "full", cache_size=10),
    Case("truncate-normal", "truncate", "normal"),
    Case("persist-full-spill", "persist", "full", cache_size=10),
    Case("persist-normal-size-limit", "persist", "normal", journal_size_limit=8192),
    Case("wal-full-spill", "wal", "full", cache_size=10),
    Case("wal-normal", "wal", "normal"),
    Case("delete-mmap", "delete", "normal", cache_size=10, mmap_size=64 << 20),
    Case("wal-mmap", "wal", "normal", mmap_size=64 << 20),
    Case("delete-exclusive", "delete", "full", cache_size=10, locking="exclusive"),
    Case("truncate-exclusive", "truncate", "normal", locking="exclusive"),
    Case("wal-exclusive", "wal", "normal", cache_size=10, locking="exclusive"),
    Case("delete-autovacuum-full", "delete", "full", cache_size=10, auto_vacuum="full"),
    Case("delete-autovacuum-incremental", "delete", "normal", auto_vacuum="incremental"),
    Case("wal-autovacuum-incremental", "wal", "normal", cache_size=10, auto_vacuum="incremental"),
    Case("delete-page-size-change", "delete", "full", cache_size=10, page_sizes=(1024, 8192, 4096)),
    Case("persist-page-size-change", "persist", "normal", page_sizes=(512, 65536, 2048)),
    Case("wal-delete-switches", "wal", "normal", cache_size=10, switch_modes=True),
]


def _open_case(connections, db, backup, case: Case):
    """Open through spool and set the case's pragmas in the order SQLite needs them."""
    pragmas: dict = {}
    if case.auto_vacuum:
        pragmas["auto_vacuum"] = case.auto_vacuum  # before the first table exists
    if case.locking != "normal":
        pragmas["locking_mode"] = case.locking
    pragmas["journal_mode"] = case.journal
    pragmas["synchronous"] = case.synchronous
    if case.cache_size:
        pragmas["cache_size"] = case.cache_size
    if case.mmap_size:
        pragmas["mmap_size"] = case.mmap_size
    if case.journal_size_limit is not None:
        pragmas["journal_size_limit"] = case.journal_size_limit
    return connections(db, backup, **pragmas)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_random_workload_converges(connections, tmp_path, rng, repro, case: Case):
    """The backup equals the source after a random mix of writes, mid-way and at the end."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = _open_case(connections, db, backup, case)
    wl = sh.Workload(
        con,
        rng,
        vacuum=True,
        incremental_vacuum=case.auto_vacuum == "incremental",
        page_sizes=case.page_sizes,
    )
    if case.auto_vacuum:
        expected = {"full": 1, "incremental": 2}[case.auto_vacuum]
        assert sh.scalar(con, "PRAGMA auto_vacuum") == expected, "auto_vacuum not set"

    chunks = 4 if case.switch_modes else 2
    done: dict[str, int] = {}
    for i in range(chunks):
        if case.switch_modes and i:
            sh.set_pragma(con, "journal_mode", "delete" if i % 2 else "wal")
        if case.page_sizes and i:  # at least one certain page size change, then compare
            con.execute(f"PRAGMA page_size={case.page_sizes[0]}; VACUUM")
            assert sh.scalar(con, "PRAGMA page_size") == case.page_sizes[0], "page_size unchanged"
        for kind, n in wl.run(STEPS // chunks).items():
            done[kind] = done.get(kind, 0) + n
        ctx = f"{case.name} after chunk {i + 1}/{chunks}, ops {done}; {repro}"
        sh.assert_backup_converged(con, db, backup, ctx)

    assert sh.scalar(con, "SELECT count(*) FROM t") > 0, f"workload left t empty; {repro}"


@pytest.mark.parametrize("mode", ["memory", "off"])
def test_journal_mode_memory_off_supported_or_refused(connections, tmp_path, rng, repro, mode):
    """journal_mode MEMORY/OFF is either kept correct or refused with a 'spoolvfs' message.

    A refusal must leave the database in its previous mode and fully working; acceptance must
    give a backup equal to the source like any rollback mode. A silent no-op fails.
    """
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode="delete", cache_size=10)
    wl = sh.Workload(con, rng, rollbacks=mode != "off")
    wl.run(10)
    try:
        rows = con.execute(f"PRAGMA journal_mode={mode}").fetchall()
    except apsw.Error as exc:
        assert "spoolvfs" in str(exc).lower(), f"refusal without 'spoolvfs' in it: {exc!r}"
        assert sh.scalar(con, "PRAGMA journal_mode") == "delete", "refused switch changed the mode"
    else:
        got = rows[0][0].lower() if rows else None
        assert got == mode, (
            f"PRAGMA journal_mode={mode} neither refused nor applied (mode is {got!r})"
        )
    wl.run(STEPS // 2)
    sh.assert_backup_converged(con, db, backup, f"journal_mode={mode}; {repro}")


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_last_close_drains_backup(spoolvfs, tmp_path, rng, repro, journal):
    """Closing the last connection without spool_sync still leaves a converged backup."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = sh.open_spool(db, backup, journal_mode=journal, cache_size=10)
    sh.Workload(con, rng).run(STEPS)
    con.close()
    sh.assert_closed_files_match(db, backup, wal=journal == "wal", context=repro)


def test_status_functions(connections, tmp_path):
    """spool_version() is text; spool_status() reports the paths; captured counts commits."""
    db, backup, spool = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "sp"
    con = connections(db, backup, spool)
    version = sh.scalar(con, "SELECT spool_version()")
    assert isinstance(version, str) and version.strip(), f"spool_version() = {version!r}"
    con.execute("CREATE TABLE x(a)")
    assert sh.spool_sync(con) == 1
    before = sh.spool_status(con)
    sh.check_status_shape(before)
    assert Path(before["spool"]).resolve() == spool.resolve(), before
    for i in range(5):
        con.execute("INSERT INTO x VALUES(?)", (i,))
    assert sh.spool_sync(con) == 1
    after = sh.spool_status(con)
    assert after["captured"] >= before["captured"] + 5, (before, after)
    assert after["applied"] == after["captured"], after
    # This process's consumer applied them: its batch and busy-time counters moved.
    assert after["batches"] > before["batches"], (before, after)
    assert after["apply_ms"] > before["apply_ms"], (before, after)
    assert after["bytes_applied"] > before["bytes_applied"], (before, after)
    assert sh.logical_dump(backup)["x"] == [(i,) for i in range(5)]
    # A quiet database's spool takes the blocks reserved a few MiB ahead of its tail, not a whole
    # preallocated segment (68 MB).
    assert 0 < after["spool_disk_bytes"] <= 10 << 20, after


def test_default_backup_and_spool_paths(connections, tmp_path):
    """Without backup=/spool= the backup is <db>-backup and the spool <db>-spool."""
    db = tmp_path / "app.db"
    con = connections(db)
    con.execute("CREATE TABLE x(a); INSERT INTO x VALUES(1)")
    assert sh.spool_sync(con) == 1
    st = sh.spool_status(con)
    assert Path(st["backup"]).resolve() == Path(f"{db}-backup").resolve(), st
    assert Path(st["spool"]).resolve() == Path(f"{db}-spool").resolve(), st
    assert sh.logical_dump(f"{db}-backup")["x"] == [(1,)]
    assert Path(f"{db}-spool").exists(), "default spool location was not created"


def test_resync_repairs_out_of_band_write(connections, tmp_path, rng, repro):
    """A write made without the VFS is repaired by spool_resync(), which counts a resync."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode="delete")
    sh.Workload(con, rng).run(30)
    sh.assert_backup_converged(con, db, backup, repro)
    resyncs = sh.spool_status(con)["resyncs"]
    # An out-of-band writer in another process (the plain unix VFS, no spool).
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('INSERT INTO t(k, v) VALUES(-1, zeroblob(20000))'); c.commit(); c.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True)
    ro = sh.ro_connect(db)
    assert sh.scalar(ro, "SELECT count(*) FROM t WHERE k = -1") == 1, "out-of-band write lost"
    ro.close()
    assert sh.scalar(con, "SELECT spool_resync()") == 1
    st = sh.assert_backup_converged(con, db, backup, f"after resync; {repro}")
    assert st["resyncs"] >= resyncs + 1, st


def test_errors_are_transparent(connections, tmp_path):
    """Through spool, SQL errors are SQLite's own (a UNIQUE violation stays ConstraintError)."""
    con = connections(tmp_path / "app.db", tmp_path / "app.db-backup")
    con.execute("CREATE TABLE u(a UNIQUE); INSERT INTO u VALUES(1)")
    with pytest.raises(apsw.ConstraintError):
        con.execute("INSERT INTO u VALUES(1)")
    with pytest.raises(apsw.SQLError):
        con.execute("SELECT * FROM no_such_table")
    assert sh.scalar(con, "SELECT count(*) FROM u") == 1


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_durable_spool_randomized(spoolvfs, tmp_path, rng, repro, journal):
    """`spool_sync=full` (each sealed record synced before the commit returns): a randomized
    workload plus one transaction bigger than the spool's reservation ahead (so records are synced
    across a reservation that grew under them) converges, and spool_status says durable."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    uri = sh.spool_uri_params(db, backup=str(backup), spool_sync="full")
    con = sh.open_spool_uri(uri, journal_mode=journal, cache_size=10)
    try:
        work = sh.Workload(con, rng)
        work.run(STEPS // 2)
        with con:
            con.execute("CREATE TABLE IF NOT EXISTS big(b BLOB)")
            con.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12)"
                " INSERT INTO big SELECT randomblob(1 << 20) FROM n"
            )
        work.run(STEPS // 2)
        ctx = f"{journal}, spool_sync=full; {repro}"
        st = sh.assert_backup_converged(con, db, backup, ctx)
        assert st["durable"] is True, f"expected durable: {st} [{ctx}]"
        assert st["resyncs"] == 1, f"expected only the first open's resync: {st} [{ctx}]"
    finally:
        con.close()
    sh.assert_closed_files_match(db, backup, journal == "wal", f"{journal} after close; {repro}")
