"""Crash torture for spoolvfs: kill -9 at random points, several writer processes, both journal
families, simulated power loss. Prints how many kill points were tried and how many failed.

Each round: W writer processes make random money transfers through the `spool` VFS (plus large
spilling transactions, checkpoints and VACUUM now and then); after a random delay one writer, or
all of them, get SIGKILL (mid-transaction, mid-commit, mid-checkpoint, mid-apply: wherever they
are). Then it checks, with plain SQLite:
  1. the source passes integrity_check and holds its invariant (constant total balance);
  2. the backup *as left* (SQLite rolls back our hot journal on open) passes integrity_check and
     holds the invariant: it is one committed state, never a mix;
and, when every writer is dead, sometimes truncates the newest spool segment (power loss of the
unsynced tail), then reopens through `spool` and requires spool_sync() == 1 and the backup to equal
the source row for row.
"""

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

ACCOUNTS = 200
TOTAL = ACCOUNTS * 1000

WRITER = r"""
import apsw, random, sys, time
lib, uri, seed, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
b = apsw.Connection(":memory:"); b.enable_load_extension(True); b.load_extension(lib)
c = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE)
c.setbusytimeout(20000)
c.execute("pragma cache_size=30")
r = random.Random(seed)
while True:
    x = r.random()
    try:
        if x < 0.04:
            with c:   # a large transaction that spills, sometimes rolled back
                c.execute("with recursive n(i) as (select 1 union all select i + 1 from n where i < ?) "
                          "insert into junk(v) select randomblob(3000) from n", (r.randrange(50, 400),))
                if r.random() < 0.5:
                    raise KeyError("rollback")
        elif x < 0.06:
            with c:
                c.execute("delete from junk where id % 3 = ?", (r.randrange(3),))
        elif x < 0.065 and mode != "wal":
            c.execute("vacuum")
        elif x < 0.08 and mode == "wal":
            c.execute("pragma wal_checkpoint(passive)").fetchall()
        else:
            a, d, amt = r.randrange(ACCOUNTS), r.randrange(ACCOUNTS), r.randrange(1, 50)
            with c:
                c.execute("update accounts set balance = balance - ? where id = ?", (amt, a))
                c.execute("update accounts set balance = balance + ? where id = ?", (amt, d))
                c.execute("insert into log(a, d, amt, note) values (?, ?, ?, ?)", (a, d, amt, r.randbytes(r.randrange(10, 600))))
    except KeyError:
        pass
    except apsw.BusyError:
        time.sleep(0.001)
""".replace("ACCOUNTS", str(ACCOUNTS))


def connect_spool(lib, uri):
    import apsw
    boot = apsw.Connection(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(lib)
    return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE
                           | apsw.SQLITE_OPEN_CREATE)


def check_plain(path, what):
    """integrity_check + invariant on `path` with plain SQLite; returns an error text or None."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)
        ok = con.execute("pragma integrity_check").fetchone()[0]
        total, n = con.execute("select sum(balance), count(*) from accounts").fetchone()
        con.close()
    except sqlite3.Error as e:
        return f"{what}: {e}"
    if ok != "ok":
        return f"{what}: integrity_check: {ok}"
    if (total, n) != (TOTAL, ACCOUNTS):
        return f"{what}: invariant broken: total={total} accounts={n}"
    return None


def run_mode(args, mode, rnd, stats):
    """Runs `args.rounds` kill rounds in `mode`, on a fresh database every `args.fresh_every`
    rounds (the database grows with every round, and every reopen compares it with its backup)."""
    done = 0
    while done < args.rounds:
        n = min(args.fresh_every, args.rounds - done)
        run_rounds(args, mode, rnd, stats, done, n)
        done += n


def run_rounds(args, mode, rnd, stats, first, rounds):
    work = tempfile.mkdtemp(prefix=f"spoolvfs-torture-{mode}-", dir=args.dir)
    db = os.path.join(work, "app.db")
    backup = os.path.join(work, "backup.db")
    uri = f"file:{db}?vfs=spool&backup={backup}"
    con = connect_spool(args.lib, uri)
    con.execute(f"pragma journal_mode={mode}").fetchall()
    con.execute("create table accounts(id integer primary key, balance integer not null)")
    con.execute("create table log(id integer primary key, a, d, amt, note)")
    con.execute("create table junk(id integer primary key, v)")
    with con:
        con.executemany("insert into accounts values (?, 1000)", [(i,) for i in range(ACCOUNTS)])
    assert con.execute("select spool_sync(60000)").fetchone()[0] == 1
    con.close()
    for rnd_no in range(first, first + rounds):
        if rnd_no and rnd_no % 25 == 0:
            print(f"[{mode}] {rnd_no} rounds, {stats['failed']} failed so far", flush=True)
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, args.lib, uri,
                                   str(rnd.randrange(1 << 30)), mode],
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(args.writers)]
        time.sleep(rnd.uniform(0.05, args.max_delay))
        # A writer that already exited crashed on its own: that is a failure, not a kill point.
        died = [p for p in procs if p.poll() is not None]
        kill_all = rnd.random() < 0.5
        victims = procs if kill_all else [rnd.choice(procs)]
        for p in victims:
            p.send_signal(signal.SIGKILL)
        stats["kills"] += len(victims)
        failures = []
        if not kill_all:
            # The others keep writing: the backup must stay consistent while they do.
            time.sleep(rnd.uniform(0.05, 0.5))
            for p in procs:
                p.send_signal(signal.SIGKILL)
            stats["kills"] += len(procs) - 1
        for p in procs:
            err = p.communicate()[1]
            if p in died:
                failures.append(f"a writer died by itself: {err.strip()[-400:]}")
        failures += filter(None, [check_plain(db, "source"), check_plain(backup, "backup as left")])
        if rnd.random() < args.power_loss:
            spool = backup_spool = db + "-spool"
            segs = sorted(f for f in os.listdir(spool) if f.endswith(".seg"))
            if segs:
                seg = os.path.join(backup_spool, segs[-1])
                size = os.path.getsize(seg)
                with open(seg, "r+b") as f:
                    f.truncate(rnd.randrange(0, size + 1))
                stats["power_losses"] += 1
        # Reopen through spool in a fresh process and require convergence.
        verify = subprocess.run([sys.executable, "-c", VERIFY, args.lib, uri, db, backup],
                                capture_output=True, text=True, timeout=300)
        if verify.returncode != 0:
            failures.append("after reopen: " + (verify.stdout + verify.stderr).strip()[-500:])
        stats["points"] += 1
        if failures:
            stats["failed"] += 1
            print(f"[{mode} round {rnd_no}] FAILED: {'; '.join(failures)}", flush=True)
            if args.keep_failures:
                kept = work + f"-failed-{rnd_no}"
                shutil.copytree(work, kept)
                print(f"  kept in {kept}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


VERIFY = r"""
import apsw, sqlite3, sys, hashlib
lib, uri, db, backup = sys.argv[1:5]
b = apsw.Connection(":memory:"); b.enable_load_extension(True); b.load_extension(lib)
c = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE)
c.setbusytimeout(20000)
ok = c.execute("select spool_sync(120000)").fetchone()[0]
def dump(rows_of):
    h = hashlib.sha256()
    for t in ("accounts", "log", "junk"):
        for row in rows_of(f"select * from {t} order by 1"):
            h.update(repr(row).encode())
    return h.hexdigest()
src = dump(lambda q: c.execute(q).fetchall())
k = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
bak = dump(lambda q: k.execute(q).fetchall())
integ = k.execute("pragma integrity_check").fetchone()[0]
k.close()
status = c.execute("select spool_status()").fetchone()[0]
c.close()
if ok != 1 or src != bak or integ != "ok":
    print(f"sync={ok} equal={src == bak} integrity={integ} status={status}")
    sys.exit(1)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="target/release/libspoolvfs.so")
    ap.add_argument("--rounds", type=int, default=10, help="kill rounds per journal mode")
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--fresh-every", type=int, default=50, help="rounds per database")
    ap.add_argument("--modes", default="wal,delete")
    ap.add_argument("--max-delay", type=float, default=1.5)
    ap.add_argument("--power-loss", type=float, default=0.3, help="probability per round")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--keep-failures", action="store_true")
    args = ap.parse_args()
    args.lib = os.path.abspath(args.lib)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    stats = {"points": 0, "kills": 0, "failed": 0, "power_losses": 0}
    t0 = time.time()
    for mode in args.modes.split(","):
        run_mode(args, mode, rnd, stats)
    print(f"torture: seed={seed} modes={args.modes} writers={args.writers}: "
          f"{stats['points']} kill points ({stats['kills']} processes killed, "
          f"{stats['power_losses']} simulated power losses) in {time.time() - t0:.0f} s")
    print(f"{stats['points'] - stats['failed']} passed, {stats['failed']} failed")
    sys.exit(1 if stats["failed"] else 0)


if __name__ == "__main__":
    main()
