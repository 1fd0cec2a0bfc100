"""A second process holding a spool connection, driven line by line from a test.

  python tests/e2e/sql_child.py --db DB [--backup B] [--pragma name=value ...]

Reads one SQL text per stdin line, runs it through its own spool connection and answers one line:
`ok <rows as JSON>` or `err <message>`. Exits (closing the connection) at end of input.
"""

from __future__ import annotations

import argparse
import json
import sys

import spool_helpers as sh


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--backup")
    ap.add_argument("--pragma", action="append", default=[])
    args = ap.parse_args()
    pragmas = dict(p.split("=", 1) for p in args.pragma)
    con = sh.open_spool(args.db, args.backup, **pragmas)
    print("ok []", flush=True)
    for line in sys.stdin:
        try:
            rows = con.execute(line).fetchall()
            print("ok " + json.dumps([list(r) for r in rows], default=repr), flush=True)
        except Exception as exc:  # reported to the test, which decides
            print(f"err {exc!r}", flush=True)
    con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
