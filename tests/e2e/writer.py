"""Writer process for the live tests: writes through the spool VFS (apsw + $SPOOLVFS_LIB).

  python tests/e2e/writer.py --db DB --backup B --journal-mode wal --mode transfers \
      [--init --accounts N] [--seconds S | --txns N] [--seed S]

transfers: each transaction moves an amount between two accounts and bumps counter.txn_no, so
sum(balance) is constant in every committed state; every 25th transaction also rewrites the pad
of many accounts (a multi-page transaction that spills with the tiny cache), and every 40th is
rolled back. inserts: transactions of 1-20 blob rows into t.

Output (line-buffered): `READY` once the schema exists and spool_sync returned 1, `txn N`
progress lines, then `SYNC r` with the final spool_sync result. Exit status 0 only if r == 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import spool_helpers as sh

PAD = 300
START_BALANCE = 1000


def init_accounts(con, n: int, rng: random.Random) -> None:
    """Schema and N accounts in ONE transaction: any committed state has all of them."""
    con.execute("BEGIN IMMEDIATE")
    con.execute(
        "CREATE TABLE IF NOT EXISTS accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL,"
        " pad BLOB);"
        "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY CHECK (id = 1), txn_no INTEGER);"
        "INSERT OR IGNORE INTO counter VALUES(1, 0);"
    )
    if sh.scalar(con, "SELECT count(*) FROM accounts") == 0:
        for i in range(1, n + 1):
            con.execute(
                "INSERT INTO accounts VALUES(?, ?, ?)", (i, START_BALANCE, rng.randbytes(PAD))
            )
    con.execute("COMMIT")


def transfer(con, rng: random.Random, n: int, txn: int) -> None:
    con.execute("BEGIN IMMEDIATE")
    a, b = rng.sample(range(1, n + 1), 2)
    amount = rng.randint(1, 50)
    con.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
    con.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
    if txn % 25 == 0:
        lo = rng.randint(1, n)
        con.execute(
            "UPDATE accounts SET pad = randomblob(?) WHERE id BETWEEN ? AND ?", (PAD, lo, lo + 200)
        )
    con.execute("UPDATE counter SET txn_no = txn_no + 1")
    con.execute("ROLLBACK" if txn % 40 == 39 else "COMMIT")


def insert_rows(con, rng: random.Random) -> None:
    con.execute("BEGIN IMMEDIATE")
    for _ in range(rng.randint(1, 20)):
        con.execute("INSERT INTO t(k, v) VALUES(?, ?)", (rng.randint(0, 99), sh.random_blob(rng)))
    con.execute("COMMIT")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--backup")
    ap.add_argument("--journal-mode", default="delete")
    ap.add_argument("--mode", choices=["transfers", "inserts"], default="transfers")
    ap.add_argument("--init", action="store_true")
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--txns", type=int, default=0, help="stop after N transactions (0: time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    con = sh.open_spool(args.db, args.backup, journal_mode=args.journal_mode, cache_size=20)
    if args.mode == "transfers":
        if args.init:
            init_accounts(con, args.accounts, rng)
    else:
        con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    print("READY" if sh.spool_sync(con) == 1 else "READY-SYNC-TIMEOUT", flush=True)

    deadline = time.monotonic() + args.seconds
    txn = 0
    while (txn < args.txns) if args.txns else (time.monotonic() < deadline):
        if args.mode == "transfers":
            transfer(con, rng, args.accounts, txn)
        else:
            insert_rows(con, rng)
        txn += 1
        if txn % 50 == 0:
            print(f"txn {txn}", flush=True)
    result = sh.spool_sync(con)
    print(f"SYNC {result} txns={txn}", flush=True)
    con.close()
    return 0 if result == 1 else 3


if __name__ == "__main__":
    sys.exit(main())
