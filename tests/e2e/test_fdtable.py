"""The consumer thread's own descriptor table (src/fdtable.rs), seen from the process.

The consumer leaves the process's descriptor table when it starts, so that the application's
system calls get the kernel's single-owner descriptor lookups back. These tests check what that
must and must not change: the consumer really has a table of its own, holding only its own files
(none of the application's), and the SQLite locks the application's connections hold on the
source survive everything the consumer opens and closes, its own exit included (POSIX locks
belong to the table that took them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import spool_helpers as sh


def consumer_tids() -> list[str]:
    """The live consumer threads of this process (a thread may end while we look)."""
    tids = []
    for t in Path("/proc/self/task").iterdir():
        try:
            if (t / "comm").read_text().strip().startswith("spoolvfs-consum"):
                tids.append(t.name)
        except OSError:
            pass  # the thread ended meanwhile
    return tids


def table_of(tid: str) -> set[str]:
    """What the descriptors of thread `tid`'s table name (nothing once the thread ended)."""
    names = set()
    try:
        fds = list(Path(f"/proc/self/task/{tid}/fd").iterdir())
    except OSError:
        return names
    for fd in fds:
        try:
            names.add(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    return names


def test_the_consumer_has_a_table_of_its_own(connections, tmp_path):
    """The consumer's descriptors are not in the application's table and the application's are
    not in the consumer's: a marker file the application holds open is absent from the
    consumer's table, the backup and the consumer lock are absent from the application's."""
    with open(tmp_path / "held-by-the-application", "w") as marker:
        db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
        con = connections(db, backup, journal_mode="wal")
        con.execute("CREATE TABLE t(v)")
        con.execute("INSERT INTO t VALUES(randomblob(3000))")
        assert sh.spool_sync(con) == 1
        st = sh.spool_status(con)
        assert st["last_error"] is None, st
        app = table_of(str(os.getpid()))
        ours = [t for t in consumer_tids() if str(tmp_path) in " ".join(table_of(t))]
        assert len(ours) == 1, f"one consumer thread with this test's files: {ours}"
        consumer = table_of(ours[0])
        assert str(backup) in consumer, (
            f"the consumer applies through its own descriptor: {consumer}"
        )
        assert str(backup) not in app, "the backup's descriptor is not in the application's table"
        lock = str(tmp_path / "app.db-spool" / "consumer.lock")
        assert lock in consumer and lock not in app, (consumer, app)
        assert marker.name in app
        assert marker.name not in consumer, "copies of the application's descriptors were closed"


# SQLite's lock bytes (os_unix.c): SHARED locks are read locks on the 510 bytes after
# PENDING + 2.
SHARED_FIRST, SHARED_SIZE = 0x40000000 + 2, 510


PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, int(sys.argv[2]), int(sys.argv[3]), 0)
got = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))[0]
print("HELD" if got == fcntl.F_RDLCK else "FREE")
"""


def read_lock_held(db: Path) -> bool:
    """Whether anyone holds a read (SHARED) lock on the database. Asked by another process:
    closing a descriptor of the file in this one would drop this process's locks on it."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(db), str(SHARED_FIRST), str(SHARED_SIZE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "HELD"


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_the_applications_source_locks_survive_the_consumer(connections, tmp_path, journal):
    """An application connection (plain unix VFS, the same SQLite library) holds a read
    transaction on the source while the consumer resyncs (opening and reading the source) and
    then exits with the last spool connection's close (closing its descriptor of the source).
    The reader's SHARED lock must hold throughout: a close in the wrong table would drop it.
    Once the reader closes, the lock is seen to go, so the probe can tell the two apart."""
    import apsw

    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode=journal)
    con.execute("CREATE TABLE t(v)")
    for _ in range(50):
        con.execute("INSERT INTO t VALUES(randomblob(2000))")
    assert sh.spool_sync(con) == 1
    reader = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READWRITE)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(50,)]
    assert read_lock_held(db), "the probe sees the reader's lock"
    assert sh.scalar(con, "SELECT spool_resync()") == 1
    assert read_lock_held(db), "the reader's lock was lost during the resync"
    st = sh.spool_status(con)
    assert st["last_error"] is None, st
    con.close()  # the last spool connection: the consumer drains, closes the source and exits
    assert not any(str(tmp_path) in " ".join(table_of(t)) for t in consumer_tids()), (
        "the consumer thread exited"
    )
    assert read_lock_held(db), "the reader's lock was lost at the consumer's exit"
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(50,)]
    reader.execute("COMMIT")
    reader.close()
    assert not read_lock_held(db), "the probe sees the lock go"
