"""Configuration mistakes and unwritable locations.

A configuration that could damage the source or can never work (backup = the source, through a
link or as one of its files; a spool that is a file; an unknown or malformed parameter) must fail
the open with SQLITE_CANTOPEN and say why in the SQLite error log, leaving the source untouched.
A location that merely cannot be written right now is a run-time problem: the open succeeds,
transactions succeed, spool_status() explains, and spool_sync never claims a backup it lacks.

The error log (SQLITE_CONFIG_LOG) can only be set before SQLite initializes, so each bad open
runs in a fresh helper process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spool_helpers as sh

OPEN_CHILD = r"""
import apsw, json, sys
lib, uri = sys.argv[1], sys.argv[2]
log = []
apsw.shutdown()
apsw.config(apsw.SQLITE_CONFIG_LOG, lambda code, msg: log.append([code, msg]))
boot = apsw.Connection(":memory:")
boot.enable_load_extension(True)
boot.load_extension(lib, "sqlite3_spoolvfs_init")
out = {}
try:
    con = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE
                          | apsw.SQLITE_OPEN_CREATE)
    out["opened"] = True
    out["rows"] = con.execute("SELECT count(*) FROM t").fetchall()
    con.close()
except Exception as exc:
    out["error"] = type(exc).__name__
    out["message"] = str(exc)
out["log"] = log
print(json.dumps(out))
"""

ROWS = 300


def make_source(db: Path, journal: str) -> dict:
    """A source with data, written with plain SQLite; returns its logical content."""
    con = sh.sqlite3.connect(db)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    con.executemany("INSERT INTO t(v) VALUES(?)", [(os.urandom(200),) for _ in range(ROWS)])
    con.commit()
    con.close()
    return sh.logical_dump(db)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bad_params(tmp: Path, db: Path) -> dict:
    """case -> (URI parameters, words the log message must contain)."""
    (tmp / "link.db").symlink_to(db)
    os.link(db, tmp / "hard.db")
    (tmp / "afile").write_text("not a directory\n")
    return {
        "backup-is-db": ({"backup": db}, ["backup", "source"]),
        "backup-symlink-to-db": ({"backup": tmp / "link.db"}, ["backup", "source"]),
        "backup-hardlink-to-db": ({"backup": tmp / "hard.db"}, ["backup", "source"]),
        "backup-is-db-wal": ({"backup": f"{db}-wal"}, ["backup", "source"]),
        "spool-is-a-file": ({"spool": tmp / "afile"}, ["spool", "file"]),
        # A spool that cannot be created is refused at open (without a spool nothing can reach
        # the backup; a wrong path is a configuration error, better loud than a silent gap).
        "spool-under-a-file": ({"spool": tmp / "afile" / "spool"}, ["spool", "Not a directory"]),
        "unknown-param": ({"spool_sink": "1"}, ["spool_sink"]),
        "spool_sync-maybe": ({"spool_sync": "maybe"}, ["spool_sync", "maybe"]),
        "backup-empty": ({"backup": ""}, ["backup", "empty"]),
    }


CASES = [
    "backup-is-db",
    "backup-symlink-to-db",
    "backup-hardlink-to-db",
    "backup-is-db-wal",
    "spool-is-a-file",
    "spool-under-a-file",
    "unknown-param",
    "spool_sync-maybe",
    "backup-empty",
]


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("case", CASES)
def test_bad_configuration_fails_the_open_and_leaves_the_source_alone(
    spoolvfs, child_env, tmp_path, case, journal
):
    """The open fails with CantOpenError, the SQLite log names the problem, the source file is
    byte-identical, nothing new appears beside it, and a plain open still sees all the data."""
    ctx = f"{case}, {journal}"
    db = tmp_path / "app.db"
    content = make_source(db, journal)
    params, words = bad_params(tmp_path, db)[case]
    before_sha, before_files = sha(db), sorted(os.listdir(tmp_path))
    uri = sh.spool_uri_params(db, **params)
    r = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, str(spoolvfs), uri],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
    )
    assert r.returncode == 0 and r.stdout.strip(), f"helper failed: {r.stderr[-2000:]} [{ctx}]"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out.get("error") == "CantOpenError", (
        f"expected the open of {uri} to fail with CantOpenError, got {out} [{ctx}]"
    )
    ours = [m for _, m in out["log"] if "spoolvfs" in m]
    assert any(all(w.lower() in m.lower() for w in words) for m in ours), (
        f"expected a spoolvfs message in the SQLite log mentioning {words}, "
        f"got {out['log']} [{ctx}]"
    )
    assert sha(db) == before_sha, f"expected the source file to be byte-identical [{ctx}]"
    assert sorted(os.listdir(tmp_path)) == before_files, (
        f"expected no new files beside the source, got {sorted(os.listdir(tmp_path))} [{ctx}]"
    )
    assert r.stderr == "", f"expected nothing on stderr, got {r.stderr[-2000:]} [{ctx}]"
    assert sh.integrity_ok(db) == "ok", (
        f"expected a plain open of the source to pass integrity_check [{ctx}]"
    )
    assert sh.logical_dump(db) == content, f"expected a plain open to see all {ROWS} rows [{ctx}]"


# --------------------------------------------------------------------------------------------
# Unwritable locations: run-time problems


def unwritable(tmp: Path) -> dict:
    """case -> (URI parameters, what last_error must mention)."""
    other = tmp / "other"
    other.mkdir()
    (other / "afile").write_text("a regular file\n")
    return {
        "backup-under-proc": (
            {"backup": "/proc/nonexistent/x.db", "spool": other / "spool"},
            "No such file or directory",
        ),
        "backup-under-a-file": (
            {"backup": other / "afile" / "x.db", "spool": other / "spool"},
            "Not a directory",
        ),
    }


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("case", ["backup-under-proc", "backup-under-a-file"])
def test_unwritable_location_is_a_runtime_problem(spoolvfs, tmp_path, rng, case, journal):
    """The open succeeds; every transaction succeeds; spool_status().last_error explains;
    spool_sync(2000) returns 0 (never 1 without a real backup); nothing but the source's own
    journal/WAL files appears beside it, and the source is intact."""
    ctx = f"{case}, {journal}"
    src = tmp_path / "src"
    src.mkdir()
    db = src / "app.db"
    params, errtext = unwritable(tmp_path)[case]
    uri = sh.spool_uri_params(db, **params, spool_drain_ms=200)
    con = sh.open_spool_uri(uri, journal_mode=journal)
    try:
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(30):
            with con:
                con.execute("INSERT INTO t(v) VALUES(randomblob(?))", (rng.randint(10, 5000),))
                if i % 5 == 4:
                    con.execute("DELETE FROM t WHERE id = ?", (rng.randint(1, i + 1),))
        n = sh.scalar(con, "SELECT count(*) FROM t")
        st = sh.wait_until(
            lambda: (s := sh.spool_status(con))["last_error"] and errtext in s["last_error"] and s,
            30,
            0.05,
            f"last_error to mention {errtext!r}",
        )
        got = sh.spool_sync(con, 2000)
        assert got == 0, (
            f"expected spool_sync(2000) = 0 without a writable {case.split('-')[0]}, "
            f"got {got}; {st} [{ctx}]"
        )
        if "backup" in case:
            bk = Path(str(params["backup"]))
            assert not bk.exists(), f"expected no backup file at {bk} [{ctx}]"
        assert sh.scalar(con, "PRAGMA integrity_check") == "ok", f"source integrity [{ctx}]"
        content = sh.logical_rows(con)
    finally:
        con.close()
    allowed = {"app.db", "app.db-journal", "app.db-wal", "app.db-shm"}
    extra = set(os.listdir(src)) - allowed
    assert not extra, (
        f"expected nothing but the source's own files beside it, found {sorted(extra)} [{ctx}]"
    )
    assert sh.logical_dump(db) == content and len(content["t"]) == n, (
        f"expected a plain open to see the {n} committed rows [{ctx}]"
    )
