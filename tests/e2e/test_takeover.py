"""Consumer takeover: exactly one process applies a database's spool to its backup; when that
process is killed (SIGKILL: no cleanup at all) another one using the database takes over.

Two helper processes hold the database through spool. We find the active consumer from
spool_status() (`consumer_pid`, `consumer_here`), kill it while the other keeps committing money
transfers (sum of balances constant, `counter.n` counting commits), then require the survivor to
become the consumer, spool_sync to return 1 in it, and the backup to equal the source.
"""

from __future__ import annotations

import threading
import time

import pytest

import spool_helpers as sh

ACCOUNTS = 200
TOTAL = ACCOUNTS * 1000
BANK = (
    "BEGIN; CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB);"
    "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO counter VALUES(1, 0);"
    "CREATE TABLE junk(id INTEGER PRIMARY KEY, v BLOB);"
    f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS})"
    " INSERT INTO accounts SELECT i, 1000, randomblob(200) FROM n; COMMIT"
)


def transfer_sql(rng, big_rows: int = 0) -> str:
    a, d = rng.sample(range(1, ACCOUNTS + 1), 2)
    amt = rng.randint(1, 50)
    stmts = [
        "BEGIN IMMEDIATE",
        f"UPDATE accounts SET balance = balance - {amt} WHERE id = {a}",
        f"UPDATE accounts SET balance = balance + {amt} WHERE id = {d}",
        "UPDATE counter SET n = n + 1",
    ]
    if big_rows:
        stmts.append(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {big_rows})"
            " INSERT INTO junk(v) SELECT randomblob(4000) FROM n"
        )
    return "; ".join(stmts + ["COMMIT"])


class Writer(threading.Thread):
    """Drives one child with transfers until stopped or until its process dies."""

    def __init__(self, child, rng, big_rows=0, after_stop=0):
        super().__init__(daemon=True)
        self.child, self.rng, self.big_rows, self.after_stop = child, rng, big_rows, after_stop
        self.commits, self.error = 0, None
        self.stop = threading.Event()
        self.started_writing = threading.Event()

    def run(self):
        left = None
        while left is None or left > 0:
            if self.stop.is_set() and left is None:
                left = self.after_stop
                continue
            ok, val = self.child.request(transfer_sql(self.rng, self.big_rows))
            if not ok:
                self.error = val
                return
            self.commits += 1
            if self.commits >= 20:
                self.started_writing.set()
            if left is not None:
                left -= 1


def open_child(procs, env, tmp_path, db, backup, name, journal):
    uri = sh.spool_uri_params(db, backup=backup)
    return sh.DrivenChild(
        procs, env, uri, tmp_path / f"{name}.stderr", journal_mode=journal, cache_size=20
    )


def active_consumer(children) -> tuple:
    """(active, others) once exactly one child says consumer_here and all agree on its pid."""

    def probe():
        sts = [c.status() for c in children]
        here = [c for c, s in zip(children, sts, strict=True) if s["consumer_here"]]
        if len(here) == 1 and all(s["consumer_pid"] == here[0].pid for s in sts):
            return here[0]
        return None

    active = sh.wait_until(probe, 60, 0.05, "exactly one active consumer that every process names")
    return active, [c for c in children if c is not active]


def check_after_takeover(survivor, db, backup, committed_min: int, ctx: str) -> None:
    sh.wait_until(
        lambda: (
            (s := survivor.status())["consumer_here"] and s["consumer_pid"] == survivor.pid and s
        ),
        60,
        0.05,
        f"the survivor (pid {survivor.pid}) to become the consumer",
    )
    got = survivor.sync(30000)
    assert got == 1, (
        f"expected spool_sync(30000) = 1 in the survivor, got {got}; {survivor.status()} [{ctx}]"
    )
    state = sh.read_committed_state(
        backup, {"sum": "SELECT sum(balance), count(*) FROM accounts", "n": "SELECT n FROM counter"}
    )
    assert state["integrity"] == "ok", (
        f"expected backup integrity ok, got {state['integrity']} [{ctx}]"
    )
    assert state["sum"] == [(TOTAL, ACCOUNTS)], (
        f"expected the invariant in the backup: {state} [{ctx}]"
    )
    src, bak = sh.logical_dump(db), sh.logical_dump(backup)
    assert src == bak, (
        f"expected the backup to equal the source: {sh.describe_logical_diff(src, bak)} [{ctx}]"
    )
    n = src["counter"][0][1]
    assert committed_min <= n <= committed_min + 1, (
        f"expected {committed_min} acknowledged commits (+1 in flight at the kill) "
        f"in the source, got {n} [{ctx}]"
    )


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sigkill_active_consumer_survivor_takes_over(
    procs, child_env, connections, tmp_path, rng, repro, journal
):
    """Both processes commit; the active consumer is SIGKILLed mid-stream; the other one keeps
    committing (none of its transactions fails), becomes the consumer (consumer_here, its pid in
    consumer_pid), and its spool_sync(30000) = 1 with a backup equal to the source."""
    ctx = f"{journal}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    a = open_child(procs, child_env, tmp_path, db, backup, "a", journal)
    a.sql(BANK)
    assert a.sync() == 1, f"expected the initial spool_sync = 1 [{ctx}]"
    b = open_child(procs, child_env, tmp_path, db, backup, "b", journal)
    active, (survivor,) = active_consumer([a, b])
    ctx += f"; killed the consumer {'a' if active is a else 'b'} (pid {active.pid})"
    wa, ws = Writer(active, rng), Writer(survivor, type(rng)(rng.random()), after_stop=150)
    wa.start()
    ws.start()
    assert wa.started_writing.wait(120) and ws.started_writing.wait(120), (
        f"writers did not start [{ctx}]"
    )
    time.sleep(rng.uniform(0, 0.3))
    rc = active.kill()
    assert rc == -9, f"expected the active consumer to die by SIGKILL, rc={rc} [{ctx}]"
    wa.join(60)
    ws.stop.set()
    ws.join(300)
    assert not ws.is_alive() and ws.error is None, (
        f"expected every survivor transaction to succeed, got {ws.error} [{ctx}]"
    )
    check_after_takeover(survivor, db, backup, wa.commits + ws.commits, ctx)
    rc, err = survivor.close()
    assert rc == 0, f"expected the survivor to exit 0: {err[-2000:]} [{ctx}]"
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sigkill_active_consumer_during_large_backlog(
    procs, child_env, connections, tmp_path, rng, repro, journal
):
    """A is the consumer; B commits large transactions (~400 KB each) as fast as it can; once a
    backlog of unapplied transactions exists, A is SIGKILLed. B keeps committing, takes over the
    whole backlog, and ends with spool_sync(30000) = 1 and a backup equal to the source."""
    ctx = f"{journal}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    a = open_child(procs, child_env, tmp_path, db, backup, "a", journal)
    a.sql(BANK)
    assert a.sync() == 1, f"expected the initial spool_sync = 1 [{ctx}]"
    assert active_consumer([a])[0] is a, f"a lone process must be the consumer [{ctx}]"
    b = open_child(procs, child_env, tmp_path, db, backup, "b", journal)
    active, _ = active_consumer([a, b])
    assert active is a, f"expected the consumer to stay with the first process [{ctx}]"
    wb = Writer(b, rng, big_rows=100, after_stop=40)
    wb.start()

    def backlog():
        st = a.status()
        return st if st["captured"] - st["applied"] >= 3 else None

    st = sh.wait_until(backlog, 120, 0.01, "a backlog of >= 3 unapplied transactions at A")
    rc = a.kill()
    assert rc == -9, f"expected A to die by SIGKILL, rc={rc} [{ctx}]"
    pending = st["captured"] - st["applied"]
    ctx += f"; killed A with {pending} transactions ({st['pending_bytes']} bytes) pending"
    wb.stop.set()
    wb.join(600)
    assert not wb.is_alive() and wb.error is None, (
        f"expected every B transaction to succeed, got {wb.error} [{ctx}]"
    )
    check_after_takeover(b, db, backup, wb.commits, ctx)
    rc, err = b.close()
    assert rc == 0, f"expected B to exit 0: {err[-2000:]} [{ctx}]"
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


def bank_with_a_consuming(procs, child_env, tmp_path, journal, ctx):
    """The bank in two processes, A (which created it) the active consumer and B passive:
    (db, backup, a, b)."""
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    a = open_child(procs, child_env, tmp_path, db, backup, "a", journal)
    a.sql(BANK)
    assert a.sync() == 1, f"expected the initial spool_sync = 1 [{ctx}]"
    b = open_child(procs, child_env, tmp_path, db, backup, "b", journal)
    active, _ = active_consumer([a, b])
    assert active is a, f"expected the consumer to stay with the first process [{ctx}]"
    return db, backup, a, b


def rolled_back_copy(backup, dest) -> dict:
    """What the backup holds once its hot journal (if any) is rolled back, as the next opener
    would: the file and its journal copied aside and opened read-write with plain SQLite."""
    import shutil
    import sqlite3

    journal = backup.with_name(backup.name + "-journal")
    shutil.copyfile(backup, dest)
    if journal.exists():
        shutil.copyfile(journal, dest.with_name(dest.name + "-journal"))
    con = sqlite3.connect(dest)
    try:
        return {
            "marker": con.execute("SELECT count(*) FROM junk WHERE id = -1").fetchall(),
            "sum": con.execute("SELECT sum(balance), count(*) FROM accounts").fetchall(),
            "integrity": con.execute("PRAGMA integrity_check").fetchall(),
        }
    finally:
        con.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sync_in_a_passive_process_survives_a_kill_of_the_consumer(
    procs, child_env, connections, tmp_path, rng, repro, journal
):
    """A is the active consumer and keeps committing, so its span on the backup stays open; B
    (passive) commits a marker row and calls spool_sync, which returns 1; then B and A are
    SIGKILLed at once. The backup, rolled back as its next opener would, must hold the marker:
    a sync answered in any process is committed on the backup, not only visible in a span that
    a kill takes back. A later opener through spool repairs the rolled-back span by a resync."""
    ctx = f"{journal}; {repro}"
    db, backup, a, b = bank_with_a_consuming(procs, child_env, tmp_path, journal, ctx)
    wa = Writer(a, rng)
    wa.start()
    assert wa.started_writing.wait(120), f"A did not start writing [{ctx}]"
    time.sleep(rng.uniform(0.05, 0.2))
    b.sql("INSERT INTO junk(id, v) VALUES(-1, x'01')")
    got = b.sync(30000)
    b.kill()
    a.kill()
    wa.join(60)
    assert got == 1, f"expected spool_sync(30000) = 1 in B, got {got} [{ctx}]"
    state = rolled_back_copy(backup, tmp_path / "crash.db")
    assert state["integrity"] == [("ok",)], f"expected an intact backup: {state} [{ctx}]"
    assert state["sum"] == [(TOTAL, ACCOUNTS)], f"expected the invariant: {state} [{ctx}]"
    assert state["marker"] == [(1,)], (
        f"expected B's synced marker row in the backup after the kill: {state} [{ctx}]"
    )
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_killed_consumer_span_is_replayed_not_resynced(
    procs, child_env, connections, tmp_path, rng, repro, journal
):
    """A is the active consumer and writes nothing itself; B commits transfers without pause, so
    A's span on the backup is open nearly all the time. A is SIGKILLed. B takes over and rolls
    the backup back to where A's span began, then replays its spool from there: no resync (the
    resync count B sees is unchanged), spool_sync(30000) = 1 in B and a backup equal to the
    source. Before, every kill of a consumer with a span open cost a resync, which reads source
    and backup whole."""
    ctx = f"{journal}; {repro}"
    db, backup, a, b = bank_with_a_consuming(procs, child_env, tmp_path, journal, ctx)
    wb = Writer(b, rng, after_stop=100)
    wb.start()
    assert wb.started_writing.wait(120), f"B did not start writing [{ctx}]"
    time.sleep(rng.uniform(0.05, 0.3))
    # From A: B's pipe belongs to its writer thread now. `resyncs` is shared by all processes.
    before = a.status()
    rc = a.kill()
    assert rc == -9, f"expected A to die by SIGKILL, rc={rc} [{ctx}]"
    wb.stop.set()
    wb.join(300)
    assert not wb.is_alive() and wb.error is None, (
        f"expected every B transaction to succeed, got {wb.error} [{ctx}]"
    )
    check_after_takeover(b, db, backup, wb.commits, ctx)
    after = b.status()
    assert after["resyncs"] == before["resyncs"], (
        f"expected the takeover to replay A's span from the spool, not resync: "
        f"before {before}, after {after} [{ctx}]"
    )
    # A kill in the few ms between two spans (after one closed at 250 ms, before the next batch)
    # leaves nothing to roll back; otherwise the takeover says what it did.
    said = after["last_error"] or ""
    assert said == "" or "replaying the spool" in said, (
        f"expected the takeover to report the rolled-back span, if any: {after} [{ctx}]"
    )
    rc, err = b.close()
    assert rc == 0, f"expected B to exit 0: {err[-2000:]} [{ctx}]"
    con = connections(db, backup)
    sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)
