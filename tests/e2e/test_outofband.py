"""Changes the spool never saw: writes to the source without spoolvfs, and tampering with the
backup (deleted, replaced by another database, modified with plain SQLite).

This process (A) keeps a spool connection open throughout; the out-of-band writer is the system
`sqlite3` shell (no extension) in another process. The product must notice on its own (an idle
check of the source's change counter / WAL frames, the backup's identity and change counter) and
repair the backup with a counted resync: spool_sync(30000) = 1 and the backup equal to the source.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

import pytest

import spool_helpers as sh

ROWS = 400


@pytest.fixture(scope="module")
def sqlite3_cli() -> str:
    path = shutil.which("sqlite3")
    if path is None:
        pytest.fail("the sqlite3 shell is required (Debian: apt-get install sqlite3)")
    return path


def cli(sqlite3_cli, db, sql: str) -> None:
    """Run `sql` with the plain system shell (no extension loaded)."""
    r = subprocess.run(
        [sqlite3_cli, "-bail", "-cmd", ".timeout 30000", str(db), sql],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"expected the sqlite3 shell to run {sql!r}: {r.stderr}"


def setup(connections, tmp_path, journal):
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode=journal)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    with con:
        con.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO t(k, v) SELECT i, randomblob(300) FROM n",
            (ROWS,),
        )
    assert sh.spool_sync(con, 30000) == 1, "expected the initial spool_sync(30000) = 1"
    return db, backup, con


def a_writes(con, rng, n: int = 5) -> None:
    for _ in range(n):
        with con:
            con.execute(
                "UPDATE t SET v = randomblob(?) WHERE id = ?",
                (rng.randint(10, 3000), rng.randint(1, ROWS)),
            )
            con.execute("INSERT INTO t(k, v) VALUES(?, randomblob(100))", (rng.randint(0, 99),))


def assert_foreign_write_repaired(con, db, backup, resyncs0: int, after: str, ctx: str) -> None:
    """The backup converges after a change made without spoolvfs (`after` names it), through a
    counted resync (more than `resyncs0`), with a last_error that says 'without spoolvfs'."""
    st = sh.assert_sync_recovers(con, db, backup, after, ctx)
    assert st["resyncs"] > resyncs0, f"expected a counted resync (> {resyncs0}): {st} [{ctx}]"
    assert st["last_error"] and "without spoolvfs" in st["last_error"], (
        f"expected last_error to mention 'without spoolvfs', got {st['last_error']!r} [{ctx}]"
    )


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_write_without_spoolvfs_is_detected_while_idle(
    connections, sqlite3_cli, tmp_path, rng, repro, journal
):
    """A keeps the db open through spool and is idle; the plain sqlite3 shell updates, inserts
    and deletes rows. With no further write from A, spool_sync(30000) = 1, the backup equals the
    source, resyncs increased and last_error mentions a write 'without spoolvfs'."""
    ctx = f"{journal}; {repro}"
    db, backup, con = setup(connections, tmp_path, journal)
    a_writes(con, rng)
    assert sh.spool_sync(con, 30000) == 1, (
        f"expected spool_sync = 1 before the foreign write [{ctx}]"
    )
    resyncs0 = sh.spool_status(con)["resyncs"]
    cli(
        sqlite3_cli,
        db,
        "BEGIN; UPDATE t SET v = zeroblob(2000), k = -1 WHERE id % 7 = 0;"
        " INSERT INTO t(k, v) VALUES(-2, zeroblob(5000)); DELETE FROM t WHERE id % 11 = 0; COMMIT;",
    )
    assert sh.scalar(con, "SELECT count(*) FROM t WHERE k = -2") == 1, (
        f"A must see the shell's write [{ctx}]"
    )
    assert_foreign_write_repaired(con, db, backup, resyncs0, "a write without spoolvfs", ctx)


def test_rolled_back_wal_restart_is_not_a_foreign_write(connections, tmp_path, repro):
    """A transaction of ours restarts the WAL (it is fully checkpointed), spills more frames than
    the last commit had, and rolls back. The idle source check then finds new-generation frames
    where our last record ended but no commit among them: nothing was written without spoolvfs,
    so there must be no loss and no resync. (It used to read those uncommitted frames as a
    foreign restart.)"""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode="wal", cache_size=10)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    with con:
        con.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)"
            " INSERT INTO t(v) SELECT randomblob(3000) FROM n"
        )
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 after the load [{repro}]"
    busy, log, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and log == done, (
        f"setup: expected a complete checkpoint, got busy={busy} log={log} checkpointed={done}"
    )
    before = sh.spool_status(con)
    con.execute("BEGIN")
    con.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)"
        " INSERT INTO t(v) SELECT randomblob(3000) FROM n"
    )
    wal_frames = (db.parent / f"{db.name}-wal").stat().st_size // (4096 + 24)
    assert wal_frames > log, (
        f"setup: the rolled-back transaction must spill more frames ({wal_frames}) than the "
        f"last commit had ({log})"
    )
    con.execute("ROLLBACK")
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 [{repro}]"
    after = sh.spool_status(con)
    assert after["last_error"] is None, f"expected no loss, got {after['last_error']!r} [{repro}]"
    assert after["resyncs"] == before["resyncs"], f"expected no resync: {before} -> {after}"
    sh.assert_backup_converged(con, db, backup, repro)


# The shell's commit changes only a table A never writes, so no later page image of A's can
# carry it into the backup by chance.
FOREIGN_COMMIT = "UPDATE side SET v = zeroblob(700) WHERE id = 7;"
# How the plain shell ends the WAL generation that holds its commit (or starts one of its own).
GENERATION_ENDINGS = {
    # Commit after our last record, then a complete checkpoint: A's next write restarts the WAL.
    "foreign-commit-then-our-restart": FOREIGN_COMMIT + " PRAGMA wal_checkpoint(PASSIVE);",
    # Commit, then checkpoint TRUNCATE: the WAL is empty when A writes its new header.
    "foreign-commit-then-truncate": FOREIGN_COMMIT + " PRAGMA wal_checkpoint(TRUNCATE);",
    # Checkpoint, then commit: the shell restarts the WAL itself; A appends after its frames.
    "foreign-restart-and-commit": "PRAGMA wal_checkpoint(PASSIVE); " + FOREIGN_COMMIT,
}


@pytest.mark.parametrize("ending", sorted(GENERATION_ENDINGS))
def test_wal_generation_ended_around_a_foreign_commit(
    connections, sqlite3_cli, tmp_path, rng, repro, ending
):
    """The plain shell commits in WAL mode and the WAL generation holding that commit ends
    (restart or truncation) right before A writes again. The spool never saw the commit and A's
    next transaction starts in a new generation, so only a check at the generation's end (or of
    where A's first frame lies) can tell. Expected: a counted resync, last_error saying 'without
    spoolvfs', and the backup equal to the source, including the shell's change."""
    ctx = f"{ending}; {repro}"
    db, backup, con = setup(connections, tmp_path, "wal")
    con.execute("CREATE TABLE side(id INTEGER PRIMARY KEY, v BLOB)")
    with con:
        con.executemany(
            "INSERT INTO side(id, v) VALUES(?, randomblob(300))",
            [(i,) for i in range(20)],
        )
    a_writes(con, rng)
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 before the shell [{ctx}]"
    resyncs0 = sh.spool_status(con)["resyncs"]
    # A's next write must follow at once: the idle source check (once a second) would otherwise
    # find the shell's commit first, and this test is about the case where it does not.
    cli(sqlite3_cli, db, GENERATION_ENDINGS[ending])
    a_writes(con, rng, n=3)
    assert sh.scalar(con, "SELECT length(v) FROM side WHERE id = 7") == 700, (
        f"A must see the shell's change [{ctx}]"
    )
    after = "a WAL generation ended by the shell"
    assert_foreign_write_repaired(con, db, backup, resyncs0, after, ctx)
    b = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        got = b.execute("SELECT length(v) FROM side WHERE id = 7").fetchone()[0]
    finally:
        b.close()
    assert got == 700, f"expected the shell's change in the backup, found length {got} [{ctx}]"


def test_closing_and_reopening_a_wal_database_reports_no_loss(connections, tmp_path, repro):
    """The negative control of the generation check: the last close of a WAL database deletes
    the WAL (its generation ends, checked by our writer), and the next open starts a new WAL with
    no old header to read. Three close/reopen rounds: no last_error, at most the one resync of a
    first open per round, and after each close the backup equal to the source. (Without the check
    at deletion, every reopen reported 'ended without spoolvfs' and resynced twice.) Nothing else
    may end the generation here: `assert_backup_converged` would checkpoint with TRUNCATE."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    resyncs = None
    for round_ in range(3):
        ctx = f"round {round_}; {repro}"
        con = connections(db, backup, journal_mode="wal")
        con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
        for _ in range(40):
            with con:
                con.execute("INSERT INTO t(v) VALUES(randomblob(500))")
        assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 [{ctx}]"
        st = sh.spool_status(con)
        assert st["last_error"] is None, f"expected no loss, got {st['last_error']!r} [{ctx}]"
        if resyncs is not None:
            assert st["resyncs"] <= resyncs + 1, (
                f"expected at most the first open's resync, {resyncs} -> {st['resyncs']} [{ctx}]"
            )
        resyncs = st["resyncs"]
        con.close()
        assert not (tmp_path / "app.db-wal").exists(), (
            f"setup: the last close deletes the WAL [{ctx}]"
        )
        sh.assert_closed_files_match(db, backup, wal=True, context=ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_deleted_backup_is_recreated(connections, tmp_path, rng, repro, journal):
    """The backup file is deleted while A runs; after A's next writes, spool_sync(30000) = 1 and
    a new backup equals the source."""
    ctx = f"{journal}; {repro}"
    db, backup, con = setup(connections, tmp_path, journal)
    a_writes(con, rng)
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 before the deletion [{ctx}]"
    os.remove(backup)
    a_writes(con, rng)
    sh.assert_sync_recovers(con, db, backup, "the backup was deleted", ctx)


@pytest.mark.parametrize("how", ["renamed-over", "copied-over"])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_backup_replaced_by_another_database(connections, tmp_path, rng, repro, journal, how):
    """The backup is replaced by a copy of an unrelated database (renamed over it, or its bytes
    overwritten in place); after A's next writes the backup converges to the source."""
    ctx = f"{journal}, {how}; {repro}"
    db, backup, con = setup(connections, tmp_path, journal)
    a_writes(con, rng)
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 before the replacement [{ctx}]"
    other = tmp_path / "other.db"
    o = sqlite3.connect(other)
    o.execute("CREATE TABLE other(x)")
    o.executemany("INSERT INTO other VALUES(?)", [(os.urandom(500),) for _ in range(50)])
    o.commit()
    o.close()
    if how == "renamed-over":
        shutil.copyfile(other, tmp_path / "tmp.db")
        os.replace(tmp_path / "tmp.db", backup)
    else:
        with open(backup, "r+b") as f:
            f.write(other.read_bytes())
            f.truncate()
    assert sh.logical_dump(backup) == sh.logical_dump(other), (
        "setup: the backup now holds the other db"
    )
    a_writes(con, rng)
    sh.assert_sync_recovers(con, db, backup, "the backup was replaced", ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_backup_modified_with_plain_sqlite(connections, tmp_path, rng, repro, journal):
    """Someone runs an UPDATE on the backup with plain SQLite; after A's next write and
    spool_sync(30000) = 1, the backup equals the source again (the foreign change is undone)."""
    ctx = f"{journal}; {repro}"
    db, backup, con = setup(connections, tmp_path, journal)
    a_writes(con, rng)
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 before the tampering [{ctx}]"
    b = sqlite3.connect(backup, timeout=30)
    b.execute("UPDATE t SET k = -99, v = zeroblob(10) WHERE id % 3 = 0")
    b.commit()
    b.close()
    a_writes(con, rng, 1)
    got = sh.spool_sync(con, 30000)
    assert got == 1, f"expected spool_sync(30000) = 1, got {got}; {sh.spool_status(con)} [{ctx}]"
    assert sh.scalar(sh.ro_connect(backup), "SELECT count(*) FROM t WHERE k = -99") == 0, (
        f"expected the foreign UPDATE on the backup to be undone [{ctx}]"
    )
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_write_without_spoolvfs_behind_a_pending_record_is_caught_by_sync(
    connections, sqlite3_cli, tmp_path, rng, repro, journal
):
    """spool_sync covers writes made without spoolvfs before the call, also when a record of
    ours is still waiting to be applied: applying that record must not count as having looked at
    the source. A reader of the backup holds the consumer inside the apply of an earlier record,
    so the next record is surely pending, and not yet looked at, when the shell writes after it
    and spool_sync is called."""
    import threading
    import time

    ctx = f"{journal}; {repro}"
    db, backup, con = setup(connections, tmp_path, journal)
    resyncs0 = sh.spool_status(con)["resyncs"]
    reader = sqlite3.connect(backup, timeout=30, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchall()  # SHARED on the backup: no apply
    a_writes(con, rng, 1)
    time.sleep(0.2)  # the consumer takes that record and waits for the backup's lock
    a_writes(con, rng, 1)
    assert sh.spool_status(con)["pending"] >= 2, f"expected pending records [{ctx}]"
    cli(sqlite3_cli, db, "UPDATE t SET k = -7 WHERE id % 5 = 0;")
    release = threading.Timer(0.5, reader.rollback)
    release.start()
    try:
        assert sh.spool_sync(con, 30000) == 1, f"spool_sync timed out [{ctx}]"
    finally:
        release.join()
        reader.close()
    # Compared right after that one call: a later spool_sync would look at the source anyway.
    source_rows, backup_rows = sh.logical_rows(con), sh.logical_dump(backup)
    assert source_rows == backup_rows, (
        "spool_sync returned 1 before the write made without spoolvfs reached the backup: "
        f"{sh.describe_logical_diff(source_rows, backup_rows)} [{ctx}]"
    )
    assert_foreign_write_repaired(con, db, backup, resyncs0, "a write behind a record", ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_write_without_spoolvfs_right_after_a_resync_is_caught(
    connections, sqlite3_cli, tmp_path, rng, repro, journal
):
    """After a resync that replayed no record, the backup is a copy of the source; a write made
    without spoolvfs right after it must be found (by comparing the source with the state the
    copy showed), not wait for our next record to expose it."""
    ctx = f"{journal}; {repro}"
    db, backup, con = setup(connections, tmp_path, journal)
    assert sh.scalar(con, "SELECT spool_resync()") == 1, f"spool_resync() failed [{ctx}]"
    resyncs0 = sh.spool_status(con)["resyncs"]
    cli(
        sqlite3_cli,
        db,
        "INSERT INTO t(k, v) VALUES(-3, zeroblob(700)); DELETE FROM t WHERE id < 9;",
    )
    assert_foreign_write_repaired(con, db, backup, resyncs0, "a write right after a resync", ctx)


@pytest.mark.parametrize("claimed_pages", [100_000, 1])
def test_a_header_size_the_file_does_not_match_is_not_trusted(
    connections, tmp_path, repro, claimed_pages
):
    """The header's page count (bytes 28-31) changed without spoolvfs so that it no longer
    matches the file: SQLite reports such a database as corrupt (more pages claimed than the file
    holds) or reads the file's pages (fewer), and the backup must mirror the file's bytes either
    way. Trusting the claim once grew a 4 KB backup to a 1.4 TB sparse file, and the next apply
    journaled every page of it (found by SQLite's corruptC.test through spool)."""
    ctx = f"header claims {claimed_pages} pages; {repro}"
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode="delete")
    con.execute("CREATE TABLE t(x); INSERT INTO t VALUES(randomblob(3000));")
    con.execute("CREATE TABLE u(x); INSERT INTO u VALUES(randomblob(3000));")
    assert sh.spool_sync(con) == 1, f"spool_sync before the change [{ctx}]"
    con.close()
    with open(db, "r+b") as f:  # the change counter and version-valid-for stay equal
        f.seek(28)
        f.write(claimed_pages.to_bytes(4, "big"))
    # SQL (spool_sync included) fails on the corrupt schema: the first open's resync is waited
    # for by the close instead, which drains the consumer.
    sh.open_spool(db, backup).close()
    source, copy = db.read_bytes(), backup.read_bytes()
    n_source, n_copy = len(source), len(copy)
    assert n_copy == n_source, (
        f"expected a backup of the source file's {n_source} bytes, got {n_copy} [{ctx}]"
    )
    differing = [i for i in range(len(source)) if source[i] != copy[i]]
    allowed = set(range(24, 28)) | set(range(92, 96))  # the change counter moved on the backup
    assert set(differing) <= allowed, f"backup bytes differ at {differing[:20]} [{ctx}]"
    journal = backup.with_name(backup.name + "-journal")
    assert not journal.exists() or journal.stat().st_size < 1 << 20, (
        f"backup journal of {journal.stat().st_size} bytes [{ctx}]"
    )
