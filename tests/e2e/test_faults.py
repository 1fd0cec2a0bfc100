"""Injected and real faults: the application never notices, the backup stays one committed state,
and everything converges once the fault is gone.

The injected faults need the test-only build (`--features fault-inject`, `$SPOOLVFS_FAULT_LIB`),
which registers the same VFS name as the normal build, so it runs in a helper process (which also
lets us check that nothing, panics included, is printed on the process's stderr). The test drives
a money-transfer workload in that process and keeps a model: the balances after every committed
transaction, indexed by the number of rows in `log`. A plain-SQLite reader of the backup must
always find a state of that history (not just an invariant: the exact balances of one commit).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path

import pytest

import spool_helpers as sh

ACCOUNTS = 100
START = 1000
FAULTS = {
    "spool_enospc": "No space left on device",
    "backup_eio": "Input/output error",
    "capture_panic": "internal error (panic)",
    "consumer_panic": "internal error (panic)",
}
#: Faults that cost the spool transactions (a resync must repair them); with `backup_eio` the
#: spool keeps everything and retrying the apply is a complete repair.
LOSSY_FAULTS = {"spool_enospc", "capture_panic", "consumer_panic"}
CONSUMER_FAULTS = {"backup_eio", "consumer_panic"}
TXNS_UNDER_FAULT = 40
STATE_QUERIES = {
    "accounts": "SELECT id, balance FROM accounts ORDER BY id",
    "log": "SELECT count(*), coalesce(sum(amt), 0) FROM log",
}


def digest(balances) -> str:
    return hashlib.sha256(repr(list(balances)).encode()).hexdigest()


class Bank:
    """Transfers driven in a child (`DrivenChild`), with an exact model of every committed state."""

    def __init__(self, child, rng: random.Random):
        self.child, self.rng = child, rng
        self.balances = [START] * ACCOUNTS
        self.commits = 0  # committed transfers == rows in log
        self.amounts = 0
        self.history = {0: digest(self.balances)}  # rows in log -> balances after that commit

    def create(self) -> None:
        self.child.sql(
            "BEGIN;"
            " CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB);"
            " CREATE TABLE log(id INTEGER PRIMARY KEY, a INTEGER, d INTEGER, amt INTEGER,"
            " note BLOB);"
            " WITH RECURSIVE n(i) AS"
            f" (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS - 1})"
            f" INSERT INTO accounts SELECT i, {START}, randomblob(300) FROM n; COMMIT"
        )

    def transfer(self) -> str:
        """One transaction: a transfer (sometimes with a multi-page, cache-spilling rewrite of
        many pads), or one rolled back. Its statements must all succeed."""
        rng = self.rng
        a, d = rng.sample(range(ACCOUNTS), 2)
        amt = rng.randint(1, 50)
        kind = rng.choices(["plain", "big", "rollback"], [6, 2, 1])[0]
        stmts = [
            "BEGIN IMMEDIATE",
            f"UPDATE accounts SET balance = balance - {amt} WHERE id = {a}",
            f"UPDATE accounts SET balance = balance + {amt} WHERE id = {d}",
            f"INSERT INTO log(a, d, amt, note)"
            f" VALUES({a}, {d}, {amt}, randomblob({rng.randint(10, 2000)}))",
        ]
        if kind != "plain":
            lo = rng.randrange(ACCOUNTS)
            stmts.append(
                f"UPDATE accounts SET pad = randomblob(300) WHERE id BETWEEN {lo} AND {lo + 60}"
            )
        stmts.append("ROLLBACK" if kind == "rollback" else "COMMIT")
        self.child.sql("; ".join(stmts))
        if kind != "rollback":
            self.balances[a] -= amt
            self.balances[d] += amt
            self.commits += 1
            self.amounts += amt
            self.history[self.commits] = digest(self.balances)
        return kind

    def check_source(self, ctx: str) -> None:
        """The application reads exactly what the model says it committed."""
        got = self.child.sql(STATE_QUERIES["accounts"])
        assert [b for _, b in got] == self.balances, (
            f"source balances differ from the model [{ctx}]"
        )
        got_log = self.child.sql(STATE_QUERIES["log"])
        assert got_log == [[self.commits, self.amounts]], (
            f"expected log (count, sum) {(self.commits, self.amounts)} in the source, "
            f"got {got_log} [{ctx}]"
        )

    def check_backup(self, backup, ctx: str, exact: bool = False) -> int:
        """The backup, read with plain SQLite, passes integrity_check and is one committed state of
        the model's history (the latest one when `exact`); returns how many transfers it holds."""
        st = sh.read_committed_state(backup, STATE_QUERIES)
        assert st["integrity"] == "ok", (
            f"expected backup integrity_check ok, got {st['integrity']} [{ctx}]"
        )
        balances = [b for _, b in st["accounts"]]
        assert len(balances) == ACCOUNTS and sum(balances) == ACCOUNTS * START, (
            f"expected {ACCOUNTS} accounts summing to {ACCOUNTS * START} in the backup, got "
            f"{len(balances)} summing to {sum(balances)} [{ctx}]"
        )
        n = st["log"][0][0]
        assert n in self.history and self.history[n] == digest(balances), (
            f"expected the backup to be a committed state: with {n} transfers logged its balances "
            f"should be those after commit {n} [{ctx}]"
        )
        if exact:
            assert n == self.commits, (
                f"expected the backup to hold all {self.commits} transfers, got {n} [{ctx}]"
            )
        return n


def start_child(procs, env, tmp_path, db, backup, journal, name="child"):
    uri = sh.spool_uri_params(db, backup=backup)
    return sh.DrivenChild(
        procs,
        env,
        uri,
        tmp_path / f"{name}.stderr",
        log=str(tmp_path / f"{name}.log"),
        journal_mode=journal,
        cache_size=20,
    )


def read_log(path: Path) -> list:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_invisible_to_the_app_and_the_backup_recovers(
    procs, fault_env, tmp_path, rng, repro, fault, journal
):
    """While `fault` is active every transaction succeeds with the model's results, spool_status()
    names the problem, the backup is always one committed state (and spool_sync never says 1 for a
    backup that is not the source); once the fault is cleared the backup converges (through a
    counted resync when the spool lost transactions). No panic message reaches stderr; panics are
    reported through sqlite3_log."""
    ctx = f"{fault}, {journal}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    child = start_child(procs, fault_env, tmp_path, db, backup, journal)
    bank = Bank(child, rng)
    bank.create()
    assert child.sync() == 1, f"expected spool_sync(30000) = 1 before any fault [{ctx}]"
    bank.check_backup(backup, f"before the fault; {ctx}", exact=True)
    resyncs0 = child.status()["resyncs"]

    faults.write_text(fault + "\n")
    for i in range(TXNS_UNDER_FAULT):
        bank.transfer()
        if i % 8 == 7:
            bank.check_backup(backup, f"after {i + 1} transactions under the fault; {ctx}")
    bank.check_source(f"under the fault; {ctx}")

    def reported():
        st = child.status()
        if st["last_error"] and FAULTS[fault] in st["last_error"]:
            return st
        bank.transfer()  # keep the product busy (the consumer may only fail when it has work)
        time.sleep(0.1)
        return None

    st = sh.wait_until(reported, 60, 0, f"spool_status().last_error to contain {FAULTS[fault]!r}")
    # The newest transaction must itself meet the fault, so that the repair cannot depend on a
    # later commit the app might never make. Capture faults strike at commit; the consumer must
    # have tried (and failed) to apply it: its failures are counted in `errors`.
    errors0 = child.status()["errors"]
    bank.transfer()
    if fault in CONSUMER_FAULTS:
        sh.wait_until(
            lambda: child.status()["errors"] > errors0,
            60,
            0.02,
            f"the consumer to fail on the last transaction (errors > {errors0})",
        )
    bank.check_backup(backup, f"fault reported ({st['state']}, {st['last_error']!r}); {ctx}")
    bank.check_source(f"fault reported; {ctx}")
    # Never "in the backup" while it is not: if a sync succeeds under the fault, it must be true.
    if child.sync(1000) == 1:
        bank.check_backup(backup, f"spool_sync(1000) returned 1 under the fault; {ctx}", exact=True)

    faults.write_text("")
    assert child.sync(30000) == 1, (
        f"expected spool_sync(30000) = 1 once the fault is cleared, with no further commit; "
        f"status {child.status()} [{ctx}]"
    )
    bank.check_backup(backup, f"fault cleared, synced; {ctx}", exact=True)
    bank.transfer()
    st = child.converged(db, backup, ctx)
    if fault in LOSSY_FAULTS:  # the spool lacks transactions: only a resync can repair that
        assert st["resyncs"] > resyncs0, (
            f"expected the repair to be a counted resync (resyncs > {resyncs0}), "
            f"status {st} [{ctx}]"
        )
    bank.check_source(f"end; {ctx}")
    rc, err = child.close()
    assert rc == 0, (
        f"expected the workload process to exit 0, got {rc}; stderr {err[-2000:]} [{ctx}]"
    )
    assert "panicked" not in err, f"expected no panic output on stderr, got: {err[-2000:]} [{ctx}]"
    if fault.endswith("_panic"):
        logged = [m for _, m in read_log(tmp_path / "child.log") if "panic" in m.lower()]
        assert logged, f"expected the panic to be reported through sqlite3_log [{ctx}]"


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_refused_block_reservation_costs_no_transaction(
    procs, fault_env, tmp_path, rng, repro, journal
):
    """The spool reserves its segment's blocks a few MiB ahead of the write position; when the
    filesystem refuses (`spool_reserve`: fallocate fails) the writer must carry on with pwrite, in
    a process that had a reservation and ran past it and in one that never got any: no error, no
    resync, and the backup is exactly the source."""
    ctx = f"{journal}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    big_rows = 12  # 12 x 1 MB: past the ~9 MiB reserved ahead at open

    def run(child, bank, label):
        child.sql("CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, b BLOB)")
        assert child.sync() == 1, f"expected spool_sync = 1 before the fault ({label}) [{ctx}]"
        resyncs0 = child.status()["resyncs"]
        faults.write_text("spool_reserve\n")
        for i in range(6):
            bank.transfer()
            if i % 2 == 0:
                child.sql(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                    f" WHERE i < {big_rows // 3})"
                    " INSERT INTO big(b) SELECT randomblob(1 << 20) FROM n"
                )
        assert child.sync() == 1, f"expected spool_sync = 1 ({label}) [{ctx}]"
        bank.check_backup(backup, f"{label}; {ctx}", exact=True)
        st = child.converged(db, backup, f"{label}; {ctx}")
        assert (st["resyncs"], st["errors"], st["last_error"]) == (resyncs0, 0, None), (
            f"expected a refused reservation to cost nothing, status {st} ({label}) [{ctx}]"
        )

    child = start_child(procs, fault_env, tmp_path, db, backup, journal)
    bank = Bank(child, rng)
    bank.create()
    run(child, bank, "refused after the first reservation")
    rc, err = child.close()
    assert rc == 0 and "panicked" not in err, f"exit {rc}, stderr {err[-2000:]} [{ctx}]"

    # A new process opens the tail segment and cannot reserve anything: no mapping at all.
    faults.write_text("")
    child = start_child(procs, fault_env, tmp_path, db, backup, journal, name="second")
    bank.child = child
    run(child, bank, "refused from the open")
    rc, err = child.close()
    assert rc == 0 and "panicked" not in err, f"exit {rc}, stderr {err[-2000:]} [{ctx}]"


def test_kill_between_a_wal_commit_and_its_seal_costs_one_resync(
    connections, procs, fault_env, tmp_path, repro
):
    """A process killed after its WAL commit and before its seal leaves a commit that the source
    has (SQLite recovers it from the WAL) and the spool lacks. The surviving process's consumer
    finds the dead transaction owner and resyncs once. When the WAL generation holding that commit
    ends later (a restart by a writer of ours), the commit is already in the backup: no second
    loss report, no second resync."""
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    # This process opens first and keeps the consumer; the child is the one that dies.
    con = connections(db, backup, journal_mode="wal")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    con.execute("INSERT INTO t(v) VALUES(1)")
    child = start_child(procs, fault_env, tmp_path, db, backup, "wal")
    child.sql("INSERT INTO t(v) VALUES(2)")
    assert sh.spool_sync(con) == 1, f"expected spool_sync = 1 before the kill [{repro}]"
    resyncs0 = sh.spool_status(con)["resyncs"]

    faults.write_text("kill_before_wal_seal\n")
    ok, reply = child.request("INSERT INTO t(v) VALUES(3)")
    assert not ok, f"expected the child to die at its seal, it replied {reply} [{repro}]"
    assert child.proc.wait(timeout=30) == -9, f"expected SIGKILL [{repro}]"
    assert sh.scalar(con, "SELECT group_concat(v) FROM t") == "1,2,3", (
        f"expected the dead process's commit in the source [{repro}]"
    )
    sh.wait_until(
        lambda: sh.spool_status(con)["resyncs"] > resyncs0,
        60,
        0.02,
        "the consumer to resync for the dead transaction owner",
    )
    sh.assert_backup_converged(con, db, backup, repro, allow_last_error=True)

    # End the generation: a complete checkpoint, then a write that restarts the WAL.
    busy, _, _ = con.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    assert busy == 0, f"expected the RESTART checkpoint to complete [{repro}]"
    con.execute("INSERT INTO t(v) VALUES(4)")
    assert sh.spool_sync(con) == 1, f"expected spool_sync = 1 after the restart [{repro}]"
    st = sh.assert_backup_converged(con, db, backup, repro, allow_last_error=True)
    assert st["resyncs"] == resyncs0 + 1, (
        f"expected exactly one resync for the lost commit, got {st['resyncs'] - resyncs0}: {st} "
        f"[{repro}]"
    )


# --------------------------------------------------------------------------------------------
# A real full disk: the spool on a 2 MB tmpfs


@pytest.fixture(scope="session")
def tmpfs_unsupported(tmp_path_factory) -> str | None:
    """None when `mount -t tmpfs` works here (checked once), else why not."""
    d = tmp_path_factory.mktemp("mountcheck")
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run mount: {exc}"
    if r.returncode != 0:
        return f"mount -t tmpfs is not permitted here: {r.stderr.strip() or r.returncode}"
    subprocess.run(["umount", str(d)], check=True, timeout=30)
    return None


def unmount(mnt: Path) -> None:
    for args in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
        if subprocess.run(args, capture_output=True, timeout=30).returncode == 0:
            return
    raise AssertionError(f"could not unmount {mnt}")


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_real_disk_full_spool_then_space_returns(
    spoolvfs, tmpfs_unsupported, tmp_path, rng, repro, journal
):
    """With the spool on a 2 MB tmpfs, >2 MB of changes (one transaction alone is 2.5 MB) all
    commit; spool_status() reports ENOSPC; the backup stays a valid committed state; after the
    filesystem grows to 64 MB the backup converges through a resync."""
    if tmpfs_unsupported:
        pytest.skip(tmpfs_unsupported)
    ctx = f"tmpfs spool, {journal}; {repro}"
    mnt = tmp_path / "small"
    mnt.mkdir()
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True, timeout=30
    )
    con = None
    try:
        uri = sh.spool_uri_params(db, backup=backup, spool=mnt / "spool")
        con = sh.open_spool_uri(uri, journal_mode=journal)
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        con.execute("INSERT INTO t(v) VALUES(randomblob(1000))")
        assert sh.spool_sync(con, 30000) == 1, f"expected the first sync to succeed [{ctx}]"
        resyncs0 = sh.spool_status(con)["resyncs"]
        rows = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        expected = 1
        with con:  # 2.5 MB in one transaction: cannot fit in a 2 MB spool
            con.execute(rows + "INSERT INTO t(v) SELECT randomblob(50000) FROM n", (50,))
        expected += 50
        for _ in range(12):  # and 12 x 200 KB more, plus deletes
            with con:
                con.execute(rows + "INSERT INTO t(v) SELECT randomblob(20000) FROM n", (10,))
            expected += 10
            victim = rng.randint(2, expected)
            expected -= sh.scalar(con, "SELECT count(*) FROM t WHERE id = ?", (victim,))
            con.execute("DELETE FROM t WHERE id = ?", (victim,))
        assert sh.scalar(con, "SELECT count(*) FROM t") == expected, f"source lost rows [{ctx}]"
        assert sh.scalar(con, "PRAGMA integrity_check") == "ok", f"source integrity [{ctx}]"
        st = sh.wait_until(
            lambda: (
                (s := sh.spool_status(con))["last_error"]
                and "No space left on device" in s["last_error"]
                and s
            ),
            60,
            0.1,
            "last_error to report 'No space left on device'",
        )
        report = sh.integrity_ok(backup)
        assert report == "ok", (
            f"expected the backup to stay valid while the spool is full: {report} [{ctx}]"
        )
        if sh.spool_sync(con, 1000) == 1:  # only if it is really true
            a, b = sh.logical_rows(con), sh.logical_dump(backup)
            assert a == b, (
                f"spool_sync said 1 with a full spool but: {sh.describe_logical_diff(a, b)} [{ctx}]"
            )
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True, timeout=30)
        assert sh.spool_sync(con, 30000) == 1, (
            f"expected spool_sync(30000) = 1 after the disk grew; status {sh.spool_status(con)} "
            f"(error seen: {st['last_error']!r}) [{ctx}]"
        )
        st = sh.assert_backup_converged(con, db, backup, ctx, allow_last_error=True)
        assert st["resyncs"] > resyncs0, f"expected a counted resync (> {resyncs0}): {st} [{ctx}]"
    finally:
        try:
            if con is not None:
                con.close()
        finally:
            unmount(mnt)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_last_error_is_kept_after_the_repair(procs, fault_env, tmp_path, rng, repro, fault):
    """README: `last_error` is the last problem this process saw, kept after it was repaired
    (for the record). After `fault` is reported, cleared and repaired (spool_sync = 1), the
    status must still report a problem (this one, or a later one it caused), not null."""
    ctx = f"{fault}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    child = start_child(procs, fault_env, tmp_path, db, backup, "delete")
    bank = Bank(child, rng)
    bank.create()
    assert child.sync() == 1, f"expected spool_sync(30000) = 1 before any fault [{ctx}]"
    faults.write_text(fault + "\n")

    def reported():
        bank.transfer()
        err = child.status()["last_error"]
        return err if err and FAULTS[fault] in err else None

    seen = sh.wait_until(reported, 60, 0.05, f"last_error to contain {FAULTS[fault]!r}")
    faults.write_text("")
    bank.transfer()  # (a commit after the fault: see test_idle_app_recovers_without_a_new_commit)
    assert child.sync(30000) == 1, (
        f"expected spool_sync(30000) = 1 once the fault is cleared [{ctx}]"
    )
    st = child.status()
    # a later problem caused by this one (a sequence gap, say) may legitimately replace it
    assert st["last_error"], (
        f"expected last_error to keep a problem (we saw {seen!r}) after the repair, "
        f"got {st['last_error']!r} "
        f"(state {st['state']}, errors {st['errors']}, resyncs {st['resyncs']}) [{ctx}]"
    )
    rc, err = child.close()
    assert rc == 0 and "panicked" not in err, (
        f"expected a clean exit, got {rc}: {err[-2000:]} [{ctx}]"
    )


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_idle_app_recovers_without_a_new_commit(
    procs, fault_env, tmp_path, rng, repro, fault, journal
):
    """One transaction meets `fault`, then the application commits nothing more: clearing the
    fault alone must bring the backup to the source (spool_sync(30000) = 1, equal), i.e. a failed
    apply is retried rather than skipped until some later commit reveals a gap."""
    ctx = f"{fault}, {journal}; {repro}"
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    child = start_child(procs, fault_env, tmp_path, db, backup, journal)
    bank = Bank(child, rng)
    bank.create()
    assert child.sync() == 1, f"expected spool_sync(30000) = 1 before any fault [{ctx}]"
    errors0 = child.status()["errors"]
    faults.write_text(fault + "\n")
    bank.transfer()
    while bank.commits == 0:
        bank.transfer()
    sh.wait_until(
        lambda: child.status()["errors"] > errors0,
        60,
        0.02,
        f"the transaction under the fault to be counted in errors (> {errors0})",
    )
    bank.check_backup(backup, f"under the fault; {ctx}")
    faults.write_text("")
    got = child.sync(30000)
    st = child.status()
    assert got == 1, (
        f"expected spool_sync(30000) = 1 after the fault was cleared with no further commit, got "
        f"{got}; state {st['state']}, captured {st['captured']}, applied {st['applied']}, pending "
        f"{st.get('pending')}, lag_ms {st['lag_ms']}, last_error {st['last_error']!r} [{ctx}]"
    )
    bank.check_backup(backup, f"fault cleared, synced; {ctx}", exact=True)
    child.converged(db, backup, ctx)
    rc, err = child.close()
    assert rc == 0 and "panicked" not in err, (
        f"expected a clean exit, got {rc}: {err[-2000:]} [{ctx}]"
    )


def test_close_while_the_consumer_reports_errors_does_not_hang(
    procs, fault_env, tmp_path, rng, repro
):
    """The child's SQLite log callback is Python code: it needs the GIL, which apsw holds through
    sqlite3_close, and the last close joins the consumer. With backup_eio active, every apply of
    the close's drain fails and is reported: the close must still return (it hung for good when
    the consumer called sqlite3_log itself), and the reports must be in the log file when the
    process has exited (delivered by the closing thread)."""
    db, backup = tmp_path / "bank.db", tmp_path / "bank.db-backup"
    faults = Path(fault_env["SPOOLVFS_FAULTS_FILE"])
    log = tmp_path / "child.log"
    child = sh.DrivenChild(
        procs,
        fault_env,
        sh.spool_uri_params(db, backup=backup, spool_drain_ms=1500),
        tmp_path / "child.stderr",
        log=str(log),
        journal_mode="delete",
        cache_size=20,
    )
    bank = Bank(child, rng)
    bank.create()
    assert child.sync() == 1, f"expected spool_sync(30000) = 1 before any fault [{repro}]"
    faults.write_text("backup_eio\n")
    # A committed transaction, so that the drain has a record to (fail to) apply: about one
    # transfer in nine rolls back, commits nothing and leaves nothing to report.
    while bank.transfer() == "rollback":
        pass
    rc, err = child.close(timeout=60)
    assert rc == 0 and "panicked" not in err, (
        f"expected a clean exit, got {rc}: {err[-2000:]} [{repro}]"
    )
    reports = [m for _, m in read_log(log) if FAULTS["backup_eio"] in m]
    assert reports, (
        f"expected the failed applies in the SQLite log, got {read_log(log)[-5:]} [{repro}]"
    )
