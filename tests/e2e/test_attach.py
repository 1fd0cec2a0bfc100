"""ATTACHed databases and temporary databases through the spool VFS.

Transactions that modify two rollback-mode databases commit through a super-journal; each
database's own journal finalization is its commit point, so each backup must equal its own
source (they are not promised to be mutually atomic). Temp databases, temp tables and the other
nameless files SQLite opens get no backup at all.
"""

from __future__ import annotations

import pytest

import spool_helpers as sh
from conftest import STEPS


@pytest.mark.parametrize("journal", ["delete", "persist"])
def test_attached_databases_commit_together(connections, tmp_path, rng, repro, journal):
    """Multi-database transactions (super-journal) leave both backups equal to their sources."""
    main, aux = tmp_path / "main.db", tmp_path / "aux.db"
    main_b, aux_b = tmp_path / "main.db-backup", tmp_path / "aux.db-backup"
    con = connections(main, main_b, journal_mode=journal, cache_size=10)
    con.execute("ATTACH ? AS aux", (sh.spool_uri(aux, aux_b),))
    assert sh.scalar(con, f"PRAGMA aux.journal_mode={journal}") == journal
    con.execute("PRAGMA aux.cache_size=10")
    assert sh.scalar(con, "PRAGMA synchronous") != 0, "super-journals need synchronous != OFF"
    con.execute(
        "CREATE TABLE main.ledger(id INTEGER PRIMARY KEY, amount INTEGER, memo BLOB);"
        "CREATE TABLE aux.ledger(id INTEGER PRIMARY KEY, amount INTEGER, memo BLOB);"
    )
    committed = 0
    for i in range(STEPS):
        con.execute("BEGIN")
        amount = rng.randint(-1000, 1000)
        memo = sh.random_blob(rng)
        con.execute("INSERT INTO main.ledger(amount, memo) VALUES(?, ?)", (amount, memo))
        con.execute("INSERT INTO aux.ledger(amount, memo) VALUES(?, ?)", (-amount, memo[::-1]))
        if rng.random() < 0.2:
            victim = rng.randint(1, i + 1)
            con.execute("DELETE FROM main.ledger WHERE id = ?", (victim,))
            con.execute("DELETE FROM aux.ledger WHERE id = ?", (victim,))
        if rng.random() < 0.15:
            con.execute("ROLLBACK")
        else:
            con.execute("COMMIT")
            committed += 1
    assert committed > 0
    leftovers = [p.name for p in tmp_path.iterdir() if "-mj" in p.name]
    assert not leftovers, f"super-journal files left behind: {leftovers}"

    sh.assert_backup_converged(con, main, main_b, f"main, {journal}; {repro}")
    aux_con = connections(aux, aux_b)
    sh.assert_backup_converged(aux_con, aux, aux_b, f"aux, {journal}; {repro}")
    # Both sides of every committed transaction made it (no half-applied multi-db commit).
    m = {r[0]: r[1] for r in sh.logical_dump(main_b)["ledger"]}
    a = {r[0]: -r[1] for r in sh.logical_dump(aux_b)["ledger"]}
    assert m == a, f"backups disagree on which transactions committed; {repro}"


def test_temp_databases_get_no_backup(connections, tmp_path, monkeypatch, rng, repro):
    """TEMP tables, ATTACH '' and temp files (temp_store=FILE) never get backups or spools."""
    monkeypatch.chdir(tmp_path)  # a stray relative "-backup" file would land here
    temp_dir = tmp_path / "sqlite-temp"
    temp_dir.mkdir()
    db, backup = tmp_path / "app.db", tmp_path / "app.db-backup"
    con = connections(db, backup, journal_mode="delete", cache_size=10, temp_store="FILE")
    con.execute(f"PRAGMA temp_store_directory='{temp_dir}'")
    try:
        con.execute("ATTACH '' AS scratch")
        con.execute(
            "CREATE TABLE t(a INTEGER PRIMARY KEY, b BLOB);"
            "CREATE TEMP TABLE tt(a INTEGER PRIMARY KEY, b BLOB);"
            "CREATE TABLE scratch.s(a INTEGER PRIMARY KEY, b BLOB);"
        )
        for _ in range(40):  # several MB: temp db and scratch spill to their files
            con.execute("INSERT INTO tt(b) VALUES(?)", (sh.random_blob(rng),))
            con.execute("INSERT INTO scratch.s(b) VALUES(?)", (sh.random_blob(rng),))
        con.execute("INSERT INTO t(b) SELECT b FROM tt WHERE a % 4 = 0")
        # a big sort/statement journal also goes to temp files
        con.execute("CREATE INDEX t_b ON t(b)")
        sh.assert_backup_converged(con, db, backup, repro)
        backup_tables = {r[1] for r in sh.logical_dump(backup)["sqlite_master"]}
        assert backup_tables == {"t", "t_b"}, f"backup holds {backup_tables}"
        assert sh.scalar(con, "SELECT count(*) FROM tt") == 40
        assert sh.scalar(con, "SELECT count(*) FROM scratch.s") == 40
    finally:
        con.execute("PRAGMA temp_store_directory=''")
    names = sorted(p.name for p in tmp_path.iterdir())
    strays = [n for n in names if not n.startswith("app.db") and n != "sqlite-temp"]
    assert not strays, f"unexpected files next to the database: {strays}"
    backups = [n for n in names if "backup" in n and not n.startswith("app.db-backup")]
    assert not backups, f"backups of temp files: {backups}"
    # The backup keeps a persistent journal (zeroed header, like SQLite's PERSIST mode): allowed,
    # but never hot once synced.
    assert [n for n in names if n.startswith("app.db-backup")] in (
        ["app.db-backup"], ["app.db-backup", "app.db-backup-journal"]), names
    bj = tmp_path / "app.db-backup-journal"
    assert not bj.exists() or bj.read_bytes()[:1] in (b"", b"\0"), "hot journal left by the backup"
    temp_left = sorted(p.name for p in temp_dir.iterdir())
    assert not temp_left, f"files left in the temp directory: {temp_left}"
