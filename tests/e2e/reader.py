"""Reader process for the live tests: polls a BACKUP with stdlib sqlite3 (plain unix VFS).

  python tests/e2e/reader.py --backup B --accounts N --total T --stop-file F [--max-seconds S]

Each read opens the backup (timeout=5), reads count(*), sum(balance) and counter.txn_no in ONE
statement (one read transaction), closes, and repeats until the stop file exists. Every 10th read
also runs PRAGMA quick_check. A violation is: a wrong count or sum, a failed quick_check, or any
error other than SQLITE_BUSY ("database is locked"). txn_no going backwards is counted apart
(`went_back`, each step back once; later reads compare with the state it went back to): a backup
never goes back, except when the process applying to it dies with a span of batches open (then
the hot journal takes it back to the span's start), which the caller allows once per kill. Prints
one JSON line: {"reads", "busy", "violations", "states", "went_back", "first_errors"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
import urllib.parse


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backup", required=True)
    ap.add_argument("--accounts", type=int, required=True)
    ap.add_argument("--total", type=int, required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--max-seconds", type=float, default=120)
    args = ap.parse_args()

    # An ordinary read-write open, as any SQLite reader would use: if the process applying to the
    # backup is killed mid-apply, the hot journal it leaves must be rolled back by the next
    # reader, which a `mode=ro` connection refuses to do (SQLITE_READONLY_ROLLBACK: an error,
    # never a wrong state). This reader only ever reads.
    uri = f"file:{urllib.parse.quote(args.backup, safe='/')}?mode=rw"
    reads = busy = violations = 0
    states: set[int] = set()
    last_txn = -1
    errors: list[str] = []
    went_back: list[str] = []
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
        try:
            con = sqlite3.connect(uri, uri=True, timeout=5)
            try:
                count, total, txn = con.execute(
                    "SELECT (SELECT count(*) FROM accounts), (SELECT sum(balance) FROM accounts),"
                    " (SELECT txn_no FROM counter)"
                ).fetchone()
                check = (
                    con.execute("PRAGMA quick_check").fetchall() if reads % 10 == 0 else [("ok",)]
                )
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                busy += 1
                continue
            violations += 1
            errors.append(f"read {reads}: {exc!r}")
            continue
        except sqlite3.Error as exc:
            violations += 1
            errors.append(f"read {reads}: {exc!r}")
            continue
        reads += 1
        states.add(txn)
        bad = []
        if count != args.accounts:
            bad.append(f"count {count} != {args.accounts}")
        if total != args.total:
            bad.append(f"sum {total} != {args.total}")
        if txn < last_txn:
            went_back.append(f"read {reads}: txn_no went back from {last_txn} to {txn}")
            last_txn = txn
        if check != [("ok",)]:
            bad.append(f"quick_check {check[:3]}")
        if bad:
            violations += 1
            errors.append(f"read {reads} (txn_no {txn}): " + ", ".join(bad))
        last_txn = max(last_txn, txn)
        time.sleep(0.002)  # leave CPU to the writer and its consumer on small machines
    print(
        json.dumps(
            {
                "reads": reads,
                "busy": busy,
                "violations": violations,
                "states": len(states),
                "max_txn": last_txn,
                "went_back": went_back,
                "first_errors": errors[:10],
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
