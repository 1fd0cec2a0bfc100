"""Live backup demo for spoolvfs (run through scripts/demo.sh).

A writer thread makes random money transfers between accounts (one small transaction each) as fast
as it can through the `spool` VFS. Once a second the demo prints the writer's rate and the backup's
lag from spool_status(). Meanwhile a separate process opens the *backup* with plain SQLite over and
over and checks that the total balance never changes: it can only hold if every state it sees is a
committed one. At the end: spool_sync(), then the backup is compared with the source.
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import apsw

ACCOUNTS = 1000
TOTAL = ACCOUNTS * 1000

READER = r"""
import sqlite3, sys, time
path, total, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
reads = bad = 0
seen = set()
import os
while not os.path.exists(stop):
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        s, n = con.execute("select sum(balance), count(*) from accounts").fetchone()
        seen.add(con.execute("select max(id) from transfers").fetchone()[0])
        con.close()
        reads += 1
        if s != total:
            bad += 1
    except sqlite3.OperationalError:
        pass  # backup not created yet, or momentarily locked by an apply
    time.sleep(0.01)
print(f"{reads} {bad} {len(seen)}")
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("seconds", nargs="?", type=float, default=10.0)
    ap.add_argument("journal_mode", nargs="?", default="wal")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="spoolvfs-demo-")
    db, backup = os.path.join(work, "app.db"), os.path.join(work, "backup", "app.db")
    os.makedirs(os.path.dirname(backup))
    boot = apsw.Connection(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(os.path.abspath(args.lib))

    uri = f"file:{db}?vfs=spool&backup={backup}"
    flags = apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    con = apsw.Connection(uri, flags=flags)
    con.execute(f"pragma journal_mode={args.journal_mode}; pragma synchronous=normal")
    con.execute("create table accounts(id integer primary key, balance integer not null)")
    con.execute("create table transfers(id integer primary key, src, dst, amount, note)")
    with con:
        con.executemany("insert into accounts values(?, 1000)", [(i,) for i in range(ACCOUNTS)])

    stop_file = os.path.join(work, "stop")
    reader = subprocess.Popen([sys.executable, "-c", READER, backup, str(TOTAL), stop_file],
                              stdout=subprocess.PIPE, text=True)
    print(f"spoolvfs demo: {args.journal_mode.upper()} source {db}\n"
          f"               backup {backup}   ({args.seconds:.0f} s of random transfers)")
    print(f"{'t':>4} {'txn/s':>8} {'captured':>9} {'applied':>9} {'lag ms':>7} {'state':>9}")

    done = threading.Event()
    count = [0]

    def writer():
        w = apsw.Connection(uri, flags=flags)
        w.execute("pragma synchronous=normal")
        rnd = random.Random(42)
        while not done.is_set():
            a, b = rnd.randrange(ACCOUNTS), rnd.randrange(ACCOUNTS)
            amt = rnd.randrange(1, 100)
            with w:
                w.execute("update accounts set balance=balance-? where id=?", (amt, a))
                w.execute("update accounts set balance=balance+? where id=?", (amt, b))
                w.execute("insert into transfers(src,dst,amount,note) values(?,?,?,?)",
                          (a, b, amt, rnd.randbytes(rnd.randrange(10, 400))))
            count[0] += 1
        w.close()

    t = threading.Thread(target=writer)
    start = time.time()
    t.start()
    last, last_t = 0, start
    while time.time() - start < args.seconds:
        time.sleep(1)
        now = time.time()
        st = json.loads(con.execute("select spool_status()").fetchone()[0])
        rate = (count[0] - last) / (now - last_t)
        last, last_t = count[0], now
        print(f"{now - start:4.0f} {rate:8.0f} {st['captured']:9d} {st['applied']:9d} "
              f"{st['lag_ms']:7d} {st['state']:>9}")
    done.set()
    t.join()
    t0 = time.time()
    synced = con.execute("select spool_sync(60000)").fetchone()[0]
    print(f"writer stopped after {count[0]} transactions; spool_sync -> {synced} "
          f"in {1000 * (time.time() - t0):.0f} ms")
    open(stop_file, "w").close()
    reads, bad, states = map(int, reader.communicate()[0].split())
    print(f"live reader: {reads} reads of the backup, {states} distinct committed states, "
          f"{bad} invariant violations")

    con.execute("pragma wal_checkpoint(truncate)" if args.journal_mode == "wal" else "select 1")
    q = "select (select sum(balance) from accounts), (select count(*) from transfers), " \
        "(select sum(length(note)) from transfers)"
    src = con.execute(q).fetchone()
    bk = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    ok = bk.execute("pragma integrity_check").fetchone()[0]
    dst = bk.execute(q).fetchone()
    bk.close()
    st = json.loads(con.execute("select spool_status()").fetchone()[0])
    con.close()
    print(f"backup: integrity_check={ok}; source {tuple(src)} vs backup {tuple(dst)}; "
          f"resyncs={st['resyncs']} last_error={st['last_error']}")
    good = synced == 1 and ok == "ok" and tuple(src) == tuple(dst) and bad == 0 and states >= 2
    print("RESULT:", "backup verified, equal to the source" if good else "MISMATCH")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
