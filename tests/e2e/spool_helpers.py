"""Shared helpers for the spoolvfs end-to-end suite.

Imported by the pytest files and by the helper processes (writer.py, reader.py), so it depends only
on the standard library plus apsw (imported lazily: reader processes never load the extension).

Two SQLite libraries meet here: apsw bundles a recent SQLite that can load extensions (it hosts the
spool VFS), while the stdlib ``sqlite3`` module links the system library (3.40.1 on Debian 12) and
reads backups and sources through the plain unix VFS, exactly as an unrelated application would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sqlite3
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = "sqlite3_spoolvfs_init"

#: Keys `spool_status()` must report, with the JSON types each may take.
STATUS_KEYS: dict[str, tuple[type, ...]] = {
    "db": (str,),
    "backup": (str,),
    "spool": (str,),
    "journal_mode": (str,),
    "captured": (int,),
    "applied": (int,),
    "pending_bytes": (int,),
    "spool_disk_bytes": (int,),
    "lag_ms": (int, float),
    "last_error": (type(None), str),
    "resyncs": (int,),
    "clean_open": (bool,),
    "bytes_applied": (int,),
    "batches": (int,),
    "apply_ms": (int, float),
}

ROLLBACK_MODES = ("delete", "truncate", "persist", "memory", "off")
SYNC_TIMEOUT_MS = 60000


# --------------------------------------------------------------------------------------------
# Locating and loading the extension


def lib_path() -> Path:
    """The built extension: `$SPOOLVFS_LIB`, else `release/libspoolvfs.so` in the cargo target
    directory (`$CARGO_TARGET_DIR`, default `target/` in the repo)."""
    env = os.environ.get("SPOOLVFS_LIB")
    if env:
        return Path(env).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    return (REPO_ROOT / target).resolve() / "release" / "libspoolvfs.so"


_loader = None  # the apsw connection that loaded the extension (kept alive on purpose)


def load_spoolvfs(path: Path | None = None):
    """Load the extension into this process's apsw SQLite, once; return the loading connection.

    The extension must return SQLITE_OK_LOAD_PERMANENTLY, so one load serves every connection the
    process opens afterwards (the VFS `spool` and, by auto-extension, the SQL functions).
    """
    global _loader
    import apsw

    if _loader is None:
        con = apsw.Connection(":memory:")
        con.enable_load_extension(True)
        con.load_extension(str(path or lib_path()), ENTRY_POINT)
        _loader = con
    return _loader


# --------------------------------------------------------------------------------------------
# Opening databases


def _q(path: os.PathLike | str) -> str:
    return urllib.parse.quote(str(path), safe="/")


def spool_uri(db, backup=None, spool=None) -> str:
    """`file:` URI selecting the spool VFS, with optional backup= and spool= parameters."""
    uri = f"file:{_q(db)}?vfs=spool"
    if backup is not None:
        uri += f"&backup={_q(backup)}"
    if spool is not None:
        uri += f"&spool={_q(spool)}"
    return uri


def open_spool(db, backup=None, spool=None, busy_timeout_ms: int = 30000, **pragmas):
    """Open `db` through the spool VFS with apsw and apply `pragmas` in the order given.

    Pragma values are spliced in as written (`journal_mode="wal"`, `cache_size=10`). A
    `journal_mode` pragma must take effect: a silently ignored switch raises AssertionError.
    """
    import apsw

    load_spoolvfs()
    con = apsw.Connection(
        spool_uri(db, backup, spool),
        flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
    )
    con.set_busy_timeout(busy_timeout_ms)
    for name, value in pragmas.items():
        set_pragma(con, name, value)
    return con


def set_pragma(con, name: str, value) -> list:
    """Run `PRAGMA name=value`; for journal_mode, assert the mode actually changed."""
    rows = con.execute(f"PRAGMA {name}={value}").fetchall()
    if name == "journal_mode":
        got = rows[0][0].lower() if rows else None
        assert got == str(value).lower(), f"PRAGMA journal_mode={value} left the mode at {got!r}"
    return rows


def scalar(con, sql: str, params=()):
    """First column of the first row of `sql` (works for apsw and stdlib connections)."""
    row = con.execute(sql, params).fetchone()
    return None if row is None else row[0]


def spool_sync(con, timeout_ms: int = SYNC_TIMEOUT_MS) -> int:
    return scalar(con, "SELECT spool_sync(?)", (timeout_ms,))


def spool_status(con) -> dict:
    """`spool_status()` parsed as JSON."""
    text = scalar(con, "SELECT spool_status()")
    assert isinstance(text, str), f"spool_status() returned {type(text).__name__}, not text"
    return json.loads(text)


def check_status_shape(st: dict) -> None:
    """Every documented key of spool_status() is present with a JSON type it may have."""
    for key, types in STATUS_KEYS.items():
        assert key in st, f"spool_status() lacks key {key!r}: {st}"
        val = st[key]
        ok = isinstance(val, types) and not (isinstance(val, bool) and bool not in types)
        assert ok, f"spool_status()[{key!r}] = {val!r} is not {[t.__name__ for t in types]}"
    for key in ("captured", "applied", "pending_bytes", "spool_disk_bytes", "resyncs", "lag_ms",
                "apply_ms"):
        assert st[key] >= 0, f"spool_status()[{key!r}] is negative: {st}"


def ro_connect(path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only stdlib (plain unix VFS) connection to `path`."""
    return sqlite3.connect(f"file:{_q(path)}?mode=ro", uri=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Comparing databases


def logical_rows(con) -> dict:
    """Everything a user can see: sqlite_master, user_version and every table's rows.

    Rows are ordered by all their columns, which is deterministic for rowid and WITHOUT ROWID
    tables alike. Works for stdlib and apsw connections.
    """
    master = con.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    dump = {"sqlite_master": master, "user_version": scalar(con, "PRAGMA user_version")}
    for (name,) in con.execute(
        "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
    ).fetchall():
        ncols = len(con.execute(f'PRAGMA table_info("{name}")').fetchall())
        order = ", ".join(str(i) for i in range(1, ncols + 1))
        dump[name] = con.execute(f'SELECT * FROM "{name}" ORDER BY {order}').fetchall()
    return dump


def logical_dump(path) -> dict:
    """`logical_rows` of the database at `path`, read with stdlib sqlite3 (read-only URI)."""
    con = ro_connect(path)
    # a corrupt backup may hold junk where text belongs: compare it, do not crash on it
    con.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        return logical_rows(con)
    finally:
        con.close()


def describe_logical_diff(a: dict, b: dict) -> str:
    """Short human description of how two `logical_rows` dumps differ ('' when equal)."""
    if a == b:
        return ""
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            out.append(f"table {key!r} only in {'source' if key in a else 'backup'}")
        elif a[key] != b[key]:
            ra, rb = a[key], b[key]
            if isinstance(ra, list):
                first = next(
                    (i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb))
                )
                out.append(f"{key}: {len(ra)} vs {len(rb)} rows, first difference at row {first}")
            else:
                out.append(f"{key}: {ra!r} vs {rb!r}")
    return "; ".join(out[:8])


def integrity_ok(path) -> str:
    """'ok' when `PRAGMA integrity_check` on `path` (stdlib, read-only) passes, else its report."""
    con = ro_connect(path)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return f"integrity_check failed: {exc}"
    finally:
        con.close()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:10])


@dataclasses.dataclass
class FileComparison:
    """Outcome of a file comparison; truthy when the files are equal."""

    equal: bool
    detail: str = ""

    def __bool__(self) -> bool:
        return self.equal


def _page_size(header: bytes) -> int:
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def _diff_pages(a: bytes, b: bytes, page_size: int, masked: dict[int, list[range]]) -> list[int]:
    """1-based numbers of pages that differ, ignoring the byte ranges in `masked[page]`."""
    npages = max(len(a), len(b)) // page_size + (max(len(a), len(b)) % page_size != 0)
    diffs = []
    for p in range(1, npages + 1):
        pa = bytearray(a[(p - 1) * page_size : p * page_size])
        pb = bytearray(b[(p - 1) * page_size : p * page_size])
        for r in masked.get(p, []):
            for buf in (pa, pb):
                if len(buf) >= r.stop:
                    buf[r.start : r.stop] = bytes(len(r))
        if pa != pb:
            diffs.append(p)
    return diffs


def _describe(a: bytes, b: bytes, page_size: int, diffs: list[int]) -> str:
    p = diffs[0]
    pa = a[(p - 1) * page_size : p * page_size]
    pb = b[(p - 1) * page_size : p * page_size]
    off = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
    return (
        f"sizes {len(a)} vs {len(b)} bytes (page size {page_size}); {len(diffs)} page(s) differ, "
        f"first is page {p} at byte {off} of the page (first few: {diffs[:10]})"
    )


def file_bytes_equal_rollback(source, backup) -> FileComparison:
    """Byte-for-byte equality, as promised for rollback-journal sources in normal locking mode."""
    a, b = Path(source).read_bytes(), Path(backup).read_bytes()
    if a == b:
        return FileComparison(True)
    page_size = _page_size(a[:100]) if len(a) >= 100 else 4096
    return FileComparison(False, _describe(a, b, page_size, _diff_pages(a, b, page_size, {})))


#: Page-1 bytes allowed to differ for WAL or locking_mode=EXCLUSIVE sources: file format
#: read/write versions (the backup is always rollback, 1/1), change counter, version-valid-for.
HEADER_EXCEPTIONS = [range(18, 20), range(24, 28), range(92, 96)]


def pages_equal_except_header(source, backup) -> FileComparison:
    """Every page equal, ignoring page-1 bytes 18-19, 24-27 and 92-95."""
    a, b = Path(source).read_bytes(), Path(backup).read_bytes()
    if len(a) < 100 or len(b) < 100:
        return FileComparison(False, f"file too short: {len(a)} vs {len(b)} bytes")
    ps_a, ps_b = _page_size(a[:100]), _page_size(b[:100])
    if ps_a != ps_b:
        return FileComparison(False, f"page size {ps_a} vs {ps_b}")
    if b[18:20] != b"\x01\x01":
        return FileComparison(False, f"backup header bytes 18,19 are {list(b[18:20])}, not [1, 1]")
    diffs = _diff_pages(a, b, ps_a, {1: HEADER_EXCEPTIONS})
    if not diffs:
        return FileComparison(True)
    return FileComparison(False, _describe(a, b, ps_a, diffs))


def assert_sync_recovers(con, db, backup, after: str, ctx: str) -> dict:
    """After damage or an outside change (`after` names it): spool_sync(30000) returns 1 and the
    backup converges (a reported last_error is allowed: the product says what it repaired).
    Returns the status seen after the sync."""
    got = spool_sync(con, 30000)
    assert got == 1, (
        f"expected spool_sync(30000) = 1 after {after}, got {got}; "
        f"{spool_status(con)} [{ctx}]"
    )
    return assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


def assert_backup_converged(con, db, backup, context: str = "", allow_last_error=False) -> dict:
    """Sync, then check everything the product promises about the backup of `con`'s main db.

    spool_sync(60000) == 1; spool_status() shape, captured == applied and no last_error; both
    files pass integrity_check; the same logical content; and the same bytes (rollback modes,
    normal locking) or the same pages except the allowed page-1 header bytes (WAL, after a
    TRUNCATE checkpoint, or locking_mode=EXCLUSIVE). Returns the status seen after the sync.
    `allow_last_error` accepts a reported last_error (after a crash the product may keep
    reporting what it recovered from); everything else is still required.
    """
    ctx = f" [{context}]" if context else ""
    assert spool_sync(con) == 1, f"spool_sync({SYNC_TIMEOUT_MS}) timed out{ctx}"
    st = spool_status(con)
    check_status_shape(st)
    if not allow_last_error:
        assert st["last_error"] is None, f"last_error after sync: {st['last_error']!r}{ctx}"
    assert st["captured"] == st["applied"], f"captured != applied after sync: {st}{ctx}"
    assert Path(st["backup"]).resolve() == Path(backup).resolve(), f"status backup: {st}{ctx}"
    assert Path(st["db"]).resolve() == Path(db).resolve(), f"status db: {st}{ctx}"
    assert Path(backup).is_file(), f"no backup file at {backup}{ctx}"
    mode = scalar(con, "PRAGMA journal_mode").lower()
    assert ("wal" in st["journal_mode"].lower()) == (mode == "wal"), (
        f"status journal_mode {st['journal_mode']!r} but the connection is in {mode}{ctx}"
    )
    locking = scalar(con, "PRAGMA locking_mode").lower()
    if mode == "wal":
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, f"source checkpoint was blocked{ctx}"
    src_check = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
    assert src_check == ["ok"], f"source integrity_check: {src_check[:5]}{ctx}"
    report = integrity_ok(backup)
    assert report == "ok", f"backup integrity_check: {report}{ctx}"
    source_rows, backup_rows = logical_rows(con), logical_dump(backup)
    assert source_rows == backup_rows, (
        f"logical content differs: {describe_logical_diff(source_rows, backup_rows)}{ctx}"
    )
    if mode in ROLLBACK_MODES and locking == "normal":
        cmp = file_bytes_equal_rollback(db, backup)
        assert cmp, f"backup not byte-identical ({mode}): {cmp.detail}{ctx}"
    else:
        cmp = pages_equal_except_header(db, backup)
        assert cmp, f"backup pages differ ({mode}, locking {locking}): {cmp.detail}{ctx}"
    return st


def assert_closed_files_match(db, backup, wal: bool, context: str = "") -> None:
    """Compare a source nobody has open with its backup (after the last connection closed)."""
    ctx = f" [{context}]" if context else ""
    assert Path(backup).is_file(), f"no backup file at {backup}{ctx}"
    wal_file = Path(f"{db}-wal")
    assert not wal_file.exists() or wal_file.stat().st_size == 0, (
        f"source still has WAL frames after close{ctx}"
    )
    assert integrity_ok(db) == "ok", f"source integrity{ctx}"
    report = integrity_ok(backup)
    assert report == "ok", f"backup integrity_check: {report}{ctx}"
    a, b = logical_dump(db), logical_dump(backup)
    assert a == b, f"logical content differs: {describe_logical_diff(a, b)}{ctx}"
    cmp = pages_equal_except_header(db, backup) if wal else file_bytes_equal_rollback(db, backup)
    assert cmp, f"files differ: {cmp.detail}{ctx}"


# --------------------------------------------------------------------------------------------
# Randomized workload


def random_blob(rng: random.Random) -> bytes:
    """10 B .. 100 KB, log-uniform: many small rows, some spanning dozens of overflow pages."""
    return rng.randbytes(int(10 ** rng.uniform(1, 5)))


SCHEMA = """
CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB, s TEXT);
CREATE INDEX IF NOT EXISTS t_k ON t(k);
CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, val BLOB) WITHOUT ROWID;
"""


class Workload:
    """Seeded random mix of writes on tables t and kv, run on any apsw connection.

    Every decision comes from `rng`, never from SQLite's random(), so a seed replays exactly.
    Flags select the risky operations a given journal/locking mode supports.
    """

    def __init__(
        self,
        con,
        rng: random.Random,
        *,
        rollbacks: bool = True,
        vacuum: bool = True,
        incremental_vacuum: bool = False,
        page_sizes: tuple[int, ...] = (),
    ):
        self.con, self.rng = con, rng
        self.rollbacks, self.vacuum = rollbacks, vacuum
        self.incremental_vacuum, self.page_sizes = incremental_vacuum, page_sizes
        self.extra_tables = 0
        con.execute(SCHEMA)

    # single statements --------------------------------------------------------------------
    def insert(self, n: int | None = None) -> None:
        for _ in range(n or self.rng.randint(1, 4)):
            self.con.execute(
                "INSERT INTO t(k, v, s) VALUES(?, ?, ?)",
                (self.rng.randint(0, 1000), random_blob(self.rng), "x" * self.rng.randint(0, 300)),
            )

    def _some_id(self) -> int:
        return self.rng.randint(1, (scalar(self.con, "SELECT max(id) FROM t") or 0) + 1)

    def update(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            self.con.execute(
                "UPDATE t SET v = ?, k = ? WHERE id = ?",
                (random_blob(self.rng), self.rng.randint(0, 1000), self._some_id()),
            )

    def delete(self) -> None:
        lo = self._some_id()
        hi = lo + self.rng.randint(0, 6)
        self.con.execute("DELETE FROM t WHERE id BETWEEN ? AND ?", (lo, hi))

    def kv(self) -> None:
        key = f"key{self.rng.randint(0, 60)}"
        if self.rng.random() < 0.2:
            self.con.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            self.con.execute("INSERT OR REPLACE INTO kv VALUES(?, ?)", (key, random_blob(self.rng)))

    def ddl(self) -> None:
        if self.extra_tables and self.rng.random() < 0.5:
            self.con.execute(f"DROP TABLE IF EXISTS extra{self.extra_tables}")
            self.extra_tables -= 1
        else:
            self.extra_tables += 1
            name = f"extra{self.extra_tables}"
            self.con.execute(f"CREATE TABLE IF NOT EXISTS {name}(a INTEGER PRIMARY KEY, b BLOB)")
            for _ in range(self.rng.randint(1, 5)):
                self.con.execute(f"INSERT INTO {name}(b) VALUES(?)", (random_blob(self.rng),))

    def op(self) -> None:
        self.rng.choices(
            [self.insert, self.update, self.delete, self.kv, self.ddl], [5, 3, 2, 2, 0.3]
        )[0]()

    # transactions ---------------------------------------------------------------------------
    def step(self) -> str:
        """One top-level step (autocommit statement, transaction, vacuum...); returns its name."""
        kinds = {
            "autocommit": 4,
            "commit": 5,
            "rollback": 1.5 if self.rollbacks else 0,
            "savepoints": 1.5 if self.rollbacks else 0,
            "big": 0.7,
            "vacuum": 0.15 if self.vacuum else 0,
            "incremental_vacuum": 0.6 if self.incremental_vacuum else 0,
            "page_size": 0.25 if self.page_sizes else 0,
        }
        kind = self.rng.choices(list(kinds), list(kinds.values()))[0]
        con, rng = self.con, self.rng
        if kind == "autocommit":
            self.op()
        elif kind in ("commit", "rollback"):
            con.execute(rng.choice(["BEGIN", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"]))
            for _ in range(rng.randint(1, 8)):
                self.op()
            con.execute("COMMIT" if kind == "commit" else "ROLLBACK")
        elif kind == "savepoints":
            con.execute("SAVEPOINT a")
            self.op()
            con.execute("SAVEPOINT b")
            for _ in range(rng.randint(1, 5)):
                self.op()
            con.execute("ROLLBACK TO b")
            self.op()
            con.execute("RELEASE b")
            if rng.random() < 0.25:
                con.execute("ROLLBACK TO a")
            con.execute("RELEASE a")
        elif kind == "big":
            # Many overflow pages in one transaction: with a tiny cache_size this spills to the
            # database file long before COMMIT (or ROLLBACK).
            con.execute("BEGIN")
            self.insert(rng.randint(10, 40))
            self.update()
            self.delete()
            con.execute("ROLLBACK" if self.rollbacks and rng.random() < 0.3 else "COMMIT")
        elif kind == "vacuum":
            con.execute("VACUUM")
        elif kind == "incremental_vacuum":
            con.execute(f"PRAGMA incremental_vacuum({rng.choice([1, 5, 50, 0])})").fetchall()
        elif kind == "page_size":
            con.execute(f"PRAGMA page_size={rng.choice(self.page_sizes)}")
            con.execute("VACUUM")
        return kind

    def run(self, steps: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _ in range(steps):
            kind = self.step()
            counts[kind] = counts.get(kind, 0) + 1
        return counts


# --------------------------------------------------------------------------------------------
# Helper processes


class LineWatcher:
    """Collects a child's stdout lines on a thread so tests can wait for a line with a timeout."""

    def __init__(self, proc):
        import queue
        import threading

        self.proc, self.lines, self._q = proc, [], queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self):
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, predicate, timeout: float = 120.0) -> str:
        """Return the first new line satisfying `predicate`; AssertionError on EOF or timeout."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for a line; saw {self.lines[-5:]}")
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(
                    f"process exited (rc={self.proc.wait()}) first; stdout tail {self.lines[-5:]}"
                    f"; stderr: {err[-2000:]}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def finish(self, timeout: float = 180.0) -> tuple[int, list[str], str]:
        """Wait for exit; return (returncode, all stdout lines, stderr)."""
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=10)
        while not self._q.empty():
            line = self._q.get()
            if line is not None:
                self.lines.append(line)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return rc, self.lines, err


class SqlChild:
    """Another process holding its own spool connection (sql_child.py), driven statement by
    statement: `child.sql("INSERT ...")` returns the rows, or raises AssertionError on error."""

    def __init__(self, start, env, db, backup=None, **pragmas):
        import subprocess
        import sys

        args = [sys.executable, Path(__file__).with_name("sql_child.py"), "--db", db]
        if backup is not None:
            args += ["--backup", backup]
        for name, value in pragmas.items():
            args += ["--pragma", f"{name}={value}"]
        self.proc = start(args, env=env, stdin=subprocess.PIPE)
        first = self.proc.stdout.readline().strip()
        assert first == "ok []", f"child failed to open {db}: {first} {self.proc.stderr.read()}"

    def sql(self, text: str) -> list:
        self.proc.stdin.write(text.replace("\n", " ") + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        assert reply.startswith("ok "), f"child: {text}: {reply or self.proc.stderr.read()}"
        return json.loads(reply[3:])

    def close(self) -> None:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=120)
        assert rc == 0, f"child exited {rc}: {self.proc.stderr.read()[-2000:]}"


# --------------------------------------------------------------------------------------------
# Robustness suite (test_faults, test_config, test_outofband, test_takeover, test_spool_lost)


def fault_lib_path() -> Path:
    """The fault-injection build: `$SPOOLVFS_FAULT_LIB`, else `faults/release/libspoolvfs.so` in
    the cargo target directory (`cargo build --release --features fault-inject --target-dir
    target/faults`)."""
    env = os.environ.get("SPOOLVFS_FAULT_LIB")
    if env:
        return Path(env).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    return (REPO_ROOT / target).resolve() / "faults" / "release" / "libspoolvfs.so"


def spool_uri_params(db, **params) -> str:
    """`file:` URI selecting the spool VFS with arbitrary extra parameters, in the order given
    (`backup=`, `spool=`, `spool_drain_ms=`, deliberately wrong ones...)."""
    uri = f"file:{_q(db)}?vfs=spool"
    for name, value in params.items():
        uri += f"&{name}={_q(value)}"
    return uri


def open_spool_uri(uri: str, busy_timeout_ms: int = 30000, **pragmas):
    """Like `open_spool`, for a ready-made URI (see `spool_uri_params`)."""
    import apsw

    load_spoolvfs()
    con = apsw.Connection(
        uri, flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    )
    con.set_busy_timeout(busy_timeout_ms)
    for name, value in pragmas.items():
        set_pragma(con, name, value)
    return con


def wait_until(probe, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Call `probe()` until it returns a truthy value and return that value; AssertionError after
    `timeout` seconds (a generous deadline, not a performance requirement)."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {what} within {timeout:.0f} s; last probe: {last!r}")
        time.sleep(interval)


def child_main() -> int:
    """Body of a `DrivenChild` process (run with `python -c`): opens one spool connection and
    serves requests line by line on stdin, answering `ok <JSON>` or `err <message>` per line.

    Requests: an SQL text (answer: the rows), or `!converged <JSON [db, backup, context]>` (runs
    `assert_backup_converged(..., allow_last_error=True)` on the connection; answer: the status).
    With `--log FILE`, SQLite's error log (sqlite3_log) is appended to FILE as JSON lines
    `[code, message]`; it is configured before SQLite initializes, as SQLITE_CONFIG_LOG requires.
    """
    import argparse
    import sys

    import apsw

    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--log")
    ap.add_argument("--pragma", action="append", default=[])
    args = ap.parse_args()
    if args.log:
        log = open(args.log, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

        def on_log(code, msg):
            log.write(json.dumps([code, msg]) + "\n")

        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_LOG, on_log)
    pragmas = dict(p.split("=", 1) for p in args.pragma)
    con = open_spool_uri(args.uri, **pragmas)
    print("ok []", flush=True)
    for line in sys.stdin:
        line = line.rstrip("\n")
        try:
            if line.startswith("!converged "):
                db, backup, context = json.loads(line[len("!converged ") :])
                st = assert_backup_converged(con, db, backup, context, allow_last_error=True)
                reply = json.dumps(st)
            else:
                reply = json.dumps([list(r) for r in con.execute(line).fetchall()], default=repr)
            print("ok " + reply, flush=True)
        except Exception as exc:  # reported to the test, which decides
            print("err " + repr(exc).replace("\n", " "), flush=True)
    con.close()
    return 0


class DrivenChild:
    """A process holding one spool connection (`child_main`), driven request by request.

    Unlike `SqlChild` it takes any URI, loads whichever library `env["SPOOLVFS_LIB"]` names (the
    fault build, say), can capture SQLite's error log (`log=`), and sends stderr to a file so a
    test can assert on everything the process printed (`close()` returns it)."""

    def __init__(self, start, env, uri: str, stderr_path, log=None, **pragmas):
        import subprocess
        import sys

        args = [sys.executable, "-c", "import spool_helpers as s, sys; sys.exit(s.child_main())",
                "--uri", uri]
        if log is not None:
            args += ["--log", log]
        for name, value in pragmas.items():
            args += ["--pragma", f"{name}={value}"]
        self.stderr_path = Path(stderr_path)
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = start(args, env=env, stdin=subprocess.PIPE, stderr=self._stderr)
        self.pid = self.proc.pid
        first = self.proc.stdout.readline().strip()
        assert first == "ok []", f"child failed to open {uri}: {first!r} {self.stderr()[-2000:]}"

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def request(self, line: str) -> tuple[bool, object]:
        """Send one request; (True, decoded JSON) or (False, error text). EOF is an error."""
        try:
            self.proc.stdin.write(line.replace("\n", " ") + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline().strip()
        except (BrokenPipeError, ValueError, OSError) as exc:  # the process died (killed)
            return False, f"process gone ({exc!r}; exit {self.proc.poll()})"
        if reply.startswith("ok "):
            return True, json.loads(reply[3:])
        return False, reply or f"no reply (process exited: {self.proc.poll()})"

    def sql(self, text: str) -> list:
        ok, val = self.request(text)
        assert ok, f"child {self.pid}: expected success of {text[:200]!r}, got {val}"
        return val

    def status(self) -> dict:
        return json.loads(self.sql("SELECT spool_status()")[0][0])

    def sync(self, timeout_ms: int = 30000) -> int:
        return self.sql(f"SELECT spool_sync({int(timeout_ms)})")[0][0]

    def converged(self, db, backup, context: str = "") -> dict:
        """`assert_backup_converged` run inside the child; returns the status it saw."""
        ok, val = self.request("!converged " + json.dumps([str(db), str(backup), context]))
        assert ok, f"child {self.pid}: expected the backup to converge: {val}"
        return val

    def close(self, timeout: float = 120) -> tuple[int, str]:
        """Close stdin (the child closes its connection and exits); (exit status, stderr)."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait(timeout=timeout)
        self._stderr.close()
        return rc, self.stderr_path.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL (by pid) and reap; returns the exit status."""
        self.proc.kill()
        rc = self.proc.wait(timeout=60)
        self._stderr.close()
        return rc


def read_committed_state(path, queries: dict[str, str], timeout: float = 30.0) -> dict:
    """Run `queries` (name -> SQL) on the database at `path` with plain SQLite, read-only, inside
    ONE read transaction (so all answers describe the same committed state), plus
    `integrity_check`. Returns {name: rows, "integrity": text}."""
    con = ro_connect(path, timeout=timeout)
    con.isolation_level = None
    try:
        con.execute("BEGIN")
        out = {name: con.execute(sql).fetchall() for name, sql in queries.items()}
        rows = con.execute("PRAGMA integrity_check").fetchall()
        out["integrity"] = "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:10])
        con.execute("COMMIT")
    finally:
        con.close()
    return out
