"""Closing and reopening: the clean-close record.

The last process to close a database records stamps of the source and the backup; the next open
with no other user skips the full compare only while both files are exactly as recorded. These
tests check both sides: a clean reopen costs no resync and keeps the backup exact, and a change
made while nobody had the database open through spoolvfs (to the source or to the backup, in
the same clock tick as the close) is still found and repaired by a counted resync.

The same-tick case is the race `filestamp::settled` closes on filesystems with coarse
timestamps; on kernels with multigrain timestamps (Linux 6.13+ on ext4, xfs, btrfs, tmpfs) the
stat of the stamp already makes the next change fine-grained, so there these tests fail only if
the record ignores the file times (checked by hand: comparing inode and size alone fails all
four `change_while_closed` cases).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import spool_helpers as sh


# spool_status's open_check when the files are as killed processes left them (consumer::crashopen).
CRASH_VOUCHED = "files as the crashed processes left them"


def open_and_write(connections, db, backup, journal, rng, rows: int):
    con = connections(db, backup, journal_mode=journal)
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    for _ in range(rows):
        with con:
            con.execute(
                "INSERT INTO t(k, v) VALUES(?, randomblob(?))",
                (rng.randint(0, 999), rng.randint(10, 2000)),
            )
    return con


def close_and_check(con, db, backup, journal, ctx):
    assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 before closing [{ctx}]"
    con.close()
    sh.assert_closed_files_match(db, backup, wal=journal == "wal", context=ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_clean_reopen_needs_no_resync(connections, tmp_path, rng, repro, journal):
    """Four open/write/close rounds with nothing in between: only the very first open resyncs
    (resyncs stays 1, clean_open is true from the second open on), and after every round the
    backup equals the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    for round_ in range(4):
        ctx = f"{journal}, round {round_}; {repro}"
        con = open_and_write(connections, db, backup, journal, rng, rows=30)
        st = sh.assert_backup_converged(con, db, backup, ctx)
        assert st["resyncs"] == 1, f"expected only the first open's resync, got {st} [{ctx}]"
        assert st["clean_open"] is (round_ > 0), f"expected clean_open = {round_ > 0}: {st} [{ctx}]"
        close_and_check(con, db, backup, journal, ctx)


def change_while_closed(path, journal: str) -> None:
    """A same-size UPDATE with plain SQLite (this process's stdlib sqlite3, no extension), right
    after the close: usually within the clock tick of the close's own last write."""
    c = sqlite3.connect(path, timeout=30)
    c.execute("UPDATE t SET k = -7 WHERE id = 3")
    c.commit()
    c.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("target", ["source", "backup"])
def test_change_while_closed_is_found(connections, tmp_path, rng, repro, journal, target):
    """Rounds of: open through spool, write, close, then at once change the source (or the
    backup) with plain SQLite, same file size; the next open must not trust the clean-close
    record: spool_sync = 1 with a counted resync, clean_open false, and the backup equal to the
    source, which holds the plain change (or, for a changed backup, not the change)."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    resyncs = 0
    for round_ in range(5):
        ctx = f"{journal}, {target} changed, round {round_}; {repro}"
        con = open_and_write(connections, db, backup, journal, rng, rows=5)
        st = sh.assert_sync_recovers(con, db, backup, "reopening", ctx)
        if round_ > 0:
            assert not st["clean_open"], f"expected the change to be noticed: {st} [{ctx}]"
            # WAL: when the open's resync finishes before this process first writes, its writer
            # restarts a WAL that the resync saw empty; the source's stamp from before that copy
            # tells it that no generation came and went since (it used to ask for a second
            # resync about half the time).
            assert st["resyncs"] == resyncs + 1, (
                f"expected one resync more than {resyncs}: {st} [{ctx}]"
            )
            want = 1 if target == "source" else 0
            ro = sh.ro_connect(backup)
            try:
                got = sh.scalar(ro, "SELECT count(*) FROM t WHERE k = -7")
            finally:
                ro.close()
            assert got == want, f"expected {want} changed row(s) in the backup, got {got} [{ctx}]"
        resyncs = st["resyncs"]
        with con:
            con.execute("UPDATE t SET k = 1 WHERE id = 3")
        close_and_check(con, db, backup, journal, ctx)
        size = db.stat().st_size if target == "source" else backup.stat().st_size
        change_while_closed(db if target == "source" else backup, journal)
        after = db.stat().st_size if target == "source" else backup.stat().st_size
        assert after == size, f"setup: the plain UPDATE changed the file size [{ctx}]"


def test_a_write_after_the_reopen_resync_costs_no_second_resync(connections, tmp_path, rng, repro):
    """WAL: a change made while closed (plain SQLite, which deletes its WAL at close) is repaired
    by the reopen's resync, which finds no WAL commit; the first write after it starts a new WAL
    generation, and the check made then must see that the source is unchanged since that copy
    instead of reporting the generation as ended without spoolvfs (which cost a second resync
    whenever the resync finished before the first write). Deterministic: the test waits for the
    resync before writing."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    for round_ in range(3):
        ctx = f"round {round_}; {repro}"
        con = open_and_write(connections, db, backup, "wal", rng, rows=5)
        with con:
            con.execute("UPDATE t SET k = 1 WHERE id = 3")  # so that the plain change changes it
        st = sh.assert_backup_converged(con, db, backup, ctx)
        resyncs = st["resyncs"]
        close_and_check(con, db, backup, "wal", ctx)
        change_while_closed(db, "wal")
        con = connections(db, backup, journal_mode="wal")
        assert sh.spool_sync(con, 60000) == 1, f"expected the reopen's resync to finish [{ctx}]"
        st = sh.spool_status(con)
        assert st["resyncs"] == resyncs + 1 and not st["clean_open"], f"{st} [{ctx}]"
        with con:
            con.execute("INSERT INTO t(k, v) VALUES(-8, randomblob(100))")
        st = sh.assert_backup_converged(con, db, backup, ctx)
        assert st["resyncs"] == resyncs + 1, f"expected no second resync: {st} [{ctx}]"
        assert sh.scalar(con, "SELECT count(*) FROM t WHERE k = -7") == 1
        con.close()


def open_persistent_wal(connections, db, backup, size_limit):
    """Open in WAL mode with SQLITE_FCNTL_PERSIST_WAL set: the last close keeps the WAL, emptied
    (truncated to 0) under a `journal_size_limit`, else with its checkpointed frames."""
    import ctypes

    import apsw

    con = connections(db, backup, journal_mode="wal")
    flag = ctypes.c_int(1)
    con.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(flag))
    if size_limit is not None:
        con.execute(f"PRAGMA journal_size_limit={size_limit}")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    return con


@pytest.mark.parametrize("size_limit", [None, 0, 1_000_000])
def test_a_persistent_wal_reopens_without_a_resync(connections, tmp_path, rng, repro, size_limit):
    """Rounds of open (SQLITE_FCNTL_PERSIST_WAL), check, write, close: every open after the
    first trusts the clean-close record (clean_open, the record's open_check, one resync in
    all), whether the last close emptied the WAL (a size limit) or kept it holding the last
    commits; then a change made while closed, with plain SQLite, is still found. Before, the
    emptied WAL cost a resync at every open, and the kept one was trusted only through the
    crash-open check, which a reboot defeats. The source is touched only through spool until the
    plain change: a plain open would checkpoint and delete the WAL."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    for round_ in range(4):
        ctx = f"size limit {size_limit}, round {round_}; {repro}"
        con = open_persistent_wal(connections, db, backup, size_limit)
        st = sh.spool_status(con)
        if round_ > 0:
            assert st["clean_open"] and st["open_check"] == "clean close recorded", (
                f"expected the clean-close record to be trusted: {st} [{ctx}]"
            )
        st = sh.assert_backup_converged(con, db, backup, ctx)  # empties the WAL (TRUNCATE)
        assert st["resyncs"] == 1, f"expected only the first open's resync: {st} [{ctx}]"
        for _ in range(20):
            with con:
                con.execute(
                    "INSERT INTO t(k, v) VALUES(?, randomblob(?))",
                    (rng.randint(0, 999), rng.randint(10, 3000)),
                )
        assert sh.spool_sync(con, 30000) == 1, f"expected spool_sync = 1 [{ctx}]"
        con.close()
        wal = Path(f"{db}-wal")
        kept = wal.stat().st_size if wal.exists() else None
        want_kept = size_limit is None
        assert (kept not in (None, 0)) == want_kept, (
            f"setup: the WAL after close is {kept} bytes [{ctx}]"
        )
    change_while_closed(db, "wal")
    con = open_persistent_wal(connections, db, backup, size_limit)
    st = sh.assert_sync_recovers(con, db, backup, "reopening after a plain change", repro)
    assert not st["clean_open"] and st["resyncs"] >= 2, f"expected a resync: {st} [{repro}]"
    assert sh.scalar(con, "SELECT count(*) FROM t WHERE k = -7") == 1


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_the_last_of_two_processes_leaves_the_record(
    procs, child_env, connections, tmp_path, rng, repro, journal
):
    """A and B (another process) write; A closes while B still has the database open, so A may
    not vouch for anything; B writes more and closes last. The next open trusts B's record
    (clean_open, no resync) and the backup equals the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    ctx = f"{journal}; {repro}"
    a = open_and_write(connections, db, backup, journal, rng, rows=10)
    resyncs = sh.assert_backup_converged(a, db, backup, ctx)["resyncs"]
    b = sh.SqlChild(procs, child_env, db, backup)
    b.sql("INSERT INTO t(k, v) VALUES(-1, randomblob(900))")
    a.close()
    b.sql("INSERT INTO t(k, v) VALUES(-2, randomblob(900))")
    assert b.sql("SELECT spool_sync(60000)") == [[1]], f"expected B's sync = 1 [{ctx}]"
    b.close()
    sh.assert_closed_files_match(db, backup, wal=journal == "wal", context=ctx)
    a = connections(db, backup, journal_mode=journal)
    st = sh.assert_backup_converged(a, db, backup, ctx)
    assert st["clean_open"] and st["resyncs"] == resyncs, (
        f"expected B's clean close to be trusted ({resyncs} resyncs): {st} [{ctx}]"
    )


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("b_writes", [False, True])
def test_a_killed_process_after_a_clean_close(
    procs, child_env, connections, tmp_path, rng, repro, journal, b_writes
):
    """After A's clean close, B opens (trusting the record) and is killed with SIGKILL, having
    written (or only read). The next open must resync if B wrote, and may trust the record if B
    only read; either way the backup equals the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    ctx = f"{journal}, B writes: {b_writes}; {repro}"
    a = open_and_write(connections, db, backup, journal, rng, rows=10)
    close_and_check(a, db, backup, journal, ctx)
    b = sh.SqlChild(procs, child_env, db, backup)
    st_b = json.loads(b.sql("SELECT spool_status()")[0][0])
    assert st_b["clean_open"], f"setup: expected B to trust A's clean close: {st_b} [{ctx}]"
    resyncs = st_b["resyncs"]
    if b_writes:
        b.sql("INSERT INTO t(k, v) VALUES(-3, randomblob(900))")
    assert b.sql("SELECT count(*) FROM t") != [], f"expected B to read [{ctx}]"
    b.proc.kill()
    b.proc.wait(timeout=60)
    a = connections(db, backup, journal_mode=journal)
    st = sh.assert_sync_recovers(a, db, backup, "B was killed", ctx)
    if b_writes:
        # The record no longer matches, but the files are as B left them: trusted as such.
        assert not st["clean_open"] and st["resyncs"] == resyncs, (
            f"expected no resync after B wrote and died, nothing else happening: {st} [{ctx}]"
        )
        assert st["open_check"] == CRASH_VOUCHED, f"expected the crash check: {st} [{ctx}]"
    else:
        assert st["clean_open"] and st["resyncs"] == resyncs, (
            f"expected the record still trusted after B only read: {st} [{ctx}]"
        )


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_database_never_written_through_spool_reopens_without_a_resync(
    connections, tmp_path, repro, journal
):
    """Nothing is ever sealed for a database only read through spoolvfs: the clean-close record
    then rests on the state the first open's resync copied. Reopening it costs no resync (it used
    to cost one every time: both files read whole), and a change made while it was closed is
    still found and repaired."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    plain = sqlite3.connect(db)
    plain.execute(f"PRAGMA journal_mode={journal}")
    plain.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    plain.executemany("INSERT INTO t(v) VALUES(randomblob(?))", [(n * 37,) for n in range(200)])
    plain.commit()
    plain.close()
    for round_ in range(3):
        ctx = f"{journal}, read-only round {round_}; {repro}"
        con = connections(db, backup)
        assert sh.scalar(con, "SELECT count(*) FROM t") == 200
        st = sh.assert_backup_converged(con, db, backup, ctx)
        assert st["captured"] == 0, f"expected nothing sealed: {st} [{ctx}]"
        assert st["resyncs"] == 1, f"expected only the first open's resync, got {st} [{ctx}]"
        assert st["clean_open"] is (round_ > 0), f"expected clean_open = {round_ > 0}: {st} [{ctx}]"
        close_and_check(con, db, backup, journal, ctx)

    ctx = f"{journal}, changed while closed; {repro}"
    plain = sqlite3.connect(db, timeout=30)
    plain.execute("UPDATE t SET v = zeroblob(length(v)) WHERE id = 3")
    plain.commit()
    plain.close()
    con = connections(db, backup)
    st = sh.assert_backup_converged(con, db, backup, ctx)
    assert not st["clean_open"] and st["resyncs"] == 2, (
        f"expected the change to be found by a resync: {st} [{ctx}]"
    )
    close_and_check(con, db, backup, journal, ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("meanwhile", ["nothing", "source written", "backup written"])
def test_reopen_after_every_process_was_killed(
    procs, child_env, connections, tmp_path, rng, repro, journal, meanwhile
):
    """The only process using a database writes through spool and is killed (SIGKILL: no clean
    close, possibly with batches uncommitted on the backup or records not applied yet). If nothing
    happened to the files since, the next open trusts them as the dead process left them: no
    resync (it would read both files whole), open_check says why, and the spool is replayed. If
    the source was written without spoolvfs, or the backup written, while nobody had the database
    open, the next open resyncs (counted). Either way the backup ends equal to the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    ctx = f"{journal}, then {meanwhile}; {repro}"
    b = sh.SqlChild(procs, child_env, db, backup, journal_mode=journal)
    b.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    assert b.sql("SELECT spool_sync(30000)") == [[1]], f"expected the first sync = 1 [{ctx}]"
    for _ in range(rng.randint(20, 60)):
        b.sql(
            f"INSERT INTO t(k, v) VALUES({rng.randint(0, 999)}, randomblob({rng.randint(10, 3000)}))"
        )
    resyncs = json.loads(b.sql("SELECT spool_status()")[0][0])["resyncs"]
    b.proc.kill()
    b.proc.wait(timeout=60)
    if meanwhile != "nothing":
        target = db if meanwhile == "source written" else backup
        plain = sqlite3.connect(target, timeout=30)
        # A change whatever state the file is in (the backup may roll back to a span's start).
        plain.execute("CREATE TABLE written_meanwhile(x)")
        plain.commit()
        plain.close()
    con = connections(db, backup, journal_mode=journal)
    st = sh.assert_sync_recovers(con, db, backup, f"killed, then {meanwhile}", ctx)
    if meanwhile == "nothing":
        assert st["resyncs"] == resyncs and st["open_check"] == CRASH_VOUCHED, (
            f"expected the files trusted as the killed process left them, no resync: "
            f"{resyncs} resyncs before, now {st} [{ctx}]"
        )
    else:
        # A changed backup is found at the open, or, when the dead process left a span open (the
        # open leaves that check to the takeover), when the span's start is checked.
        assert st["resyncs"] > resyncs, (
            f"expected a counted resync after the {meanwhile.split()[0]} changed while closed: "
            f"{resyncs} resyncs before, now {st} [{ctx}]"
        )
        if meanwhile == "source written":
            assert st["open_check"].startswith("resync: "), (
                f"expected the open to find the source changed: {st} [{ctx}]"
            )
    close_and_check(con, db, backup, journal, ctx)


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("spill", [False, True])
def test_reopen_after_a_kill_inside_a_transaction(
    procs, child_env, connections, tmp_path, rng, repro, journal, spill
):
    """The only process is killed with a transaction open (rows inserted, no COMMIT), small
    enough to stay in its page cache or spilling to the files. Unless it left something to roll
    back, it committed nothing and changed nothing a reader sees, and the next open trusts the
    files (no resync), clearing the dead transaction's claim: WAL mode always (its frames follow
    the last commit frame, which recovery ignores), rollback mode when the journal was never
    synced (its header is still zero, as SQLite writes it before the first sync). A rollback-mode
    spill writes the database file behind a synced journal: a resync. Either way the uncommitted
    rows are in neither file and the backup equals the source."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    ctx = f"{journal}, spill {spill}; {repro}"
    b = sh.SqlChild(procs, child_env, db, backup, journal_mode=journal, cache_size=10)
    b.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    for _ in range(rng.randint(5, 20)):
        b.sql(f"INSERT INTO t(k, v) VALUES(1, randomblob({rng.randint(10, 3000)}))")
    assert b.sql("SELECT spool_sync(30000)") == [[1]], f"expected a sync = 1 [{ctx}]"
    resyncs = json.loads(b.sql("SELECT spool_status()")[0][0])["resyncs"]
    b.sql("BEGIN")
    if spill:  # hundreds of 3 KB rows through a cache of 10 pages
        b.sql("INSERT INTO t(k, v) SELECT -1, randomblob(3000) FROM t, t AS t2")
    else:  # one page or two, kept in the cache
        b.sql("INSERT INTO t(k, v) VALUES(-1, x'00')")
    b.proc.kill()
    b.proc.wait(timeout=60)
    con = connections(db, backup, journal_mode=journal)
    st = sh.assert_sync_recovers(con, db, backup, "killed inside a transaction", ctx)
    assert sh.scalar(con, "SELECT count(*) FROM t WHERE k = -1") == 0, (
        f"expected the uncommitted rows gone [{ctx}]"
    )
    if journal == "delete" and spill:
        assert st["resyncs"] == resyncs + 1 and "journal" in st["open_check"], (
            f"expected a resync for the journal left to roll back: {resyncs} before, now {st} "
            f"[{ctx}]"
        )
    else:
        assert st["resyncs"] == resyncs and st["open_check"] == CRASH_VOUCHED, (
            f"expected no resync after a transaction that committed nothing: "
            f"{resyncs} resyncs before, now {st} [{ctx}]"
        )
    close_and_check(con, db, backup, journal, ctx)
