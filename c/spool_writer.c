/*
** spool_writer: drive a write workload through the spool VFS from a plain C program.
**
** It proves that an ordinary application linked with the system SQLite (-lsqlite3, 3.40.1 on
** Debian 12) can load libspoolvfs at run time and keep a live backup. Used by tests/e2e.
**
**   spool_writer DB BACKUP JOURNAL_MODE NTXN MODE [ACCOUNTS [SECONDS]]
**
**   DB            source database path (created if missing)
**   BACKUP        backup path, passed as the backup= URI parameter
**   JOURNAL_MODE  delete | truncate | persist | wal
**   NTXN          number of transactions to run
**   MODE          transfers: move money between ACCOUNTS accounts (sum(balance) is constant in
**                 every committed state, counter.txn_no counts commits); the schema and accounts
**                 are created in one transaction if missing.
**                 inserts: transactions of 1-20 rows with 10 B..64 KB blobs into t, with a tiny
**                 page cache so large transactions spill before COMMIT.
**   ACCOUNTS      number of accounts (default 500)
**   SECONDS       stop early after this many seconds (default: no limit)
**
** Environment: SPOOLVFS_LIB (default target/release/libspoolvfs.so), SPOOL_WRITER_SEED.
** Output, line-buffered: "READY" after the schema exists and spool_sync returned 1, "txn N"
** every 50 transactions, then "SYNC r txns=N" with the final spool_sync(60000) result.
** Exit status: 0 if the final sync returned 1, 3 if it timed out, 2 on any SQLite error.
*/
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spoolvfs.h"
#include "uri_append.h"

static sqlite3 *db;

static void die(const char *what) {
  fprintf(stderr, "spool_writer: %s: %s\n", what, db ? sqlite3_errmsg(db) : "(no db)");
  exit(2);
}

static void exec(const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "spool_writer: %s: %s\n", sql, err ? err : "?");
    sqlite3_free(err);
    exit(2);
  }
}

static sqlite3_stmt *prepare(const char *sql) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) die(sql);
  return st;
}

/* Run a prepared statement to completion and reset it. */
static void run(sqlite3_stmt *st) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) die(sqlite3_sql(st));
  sqlite3_reset(st);
}

static sqlite3_int64 query_int(const char *sql) {
  sqlite3_stmt *st = prepare(sql);
  if (sqlite3_step(st) != SQLITE_ROW) die(sql);
  sqlite3_int64 v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static uint64_t rng_state;
static uint64_t rnd(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}
static int rnd_range(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int spool_sync(int timeout_ms) {
  char sql[64];
  snprintf(sql, sizeof sql, "SELECT spool_sync(%d)", timeout_ms);
  return (int)query_int(sql);
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr,
            "usage: %s DB BACKUP JOURNAL_MODE NTXN transfers|inserts [ACCOUNTS [SECONDS]]\n",
            argv[0]);
    return 64;
  }
  const char *path = argv[1], *backup = argv[2], *journal = argv[3], *mode = argv[5];
  long ntxn = atol(argv[4]);
  int accounts = argc > 6 ? atoi(argv[6]) : 500;
  double seconds = argc > 7 ? atof(argv[7]) : 0;
  int transfers = strcmp(mode, "transfers") == 0;
  if (!transfers && strcmp(mode, "inserts") != 0) {
    fprintf(stderr, "spool_writer: unknown mode %s\n", mode);
    return 64;
  }
  const char *lib = getenv("SPOOLVFS_LIB");
  if (!lib) lib = "target/release/libspoolvfs.so";
  const char *seed = getenv("SPOOL_WRITER_SEED");
  rng_state = seed ? strtoull(seed, NULL, 10) | 1 : (uint64_t)time(NULL) | 1;

  /* Load once on a scratch connection. The extension stays loaded (SQLITE_OK_LOAD_PERMANENTLY)
  ** after that connection closes: the VFS and the auto-extension functions remain. */
  sqlite3 *boot;
  char *err = NULL;
  if (sqlite3_open(":memory:", &boot) != SQLITE_OK) return 2;
  sqlite3_enable_load_extension(boot, 1);
  if (sqlite3_load_extension(boot, lib, SPOOLVFS_ENTRY_POINT, &err) != SQLITE_OK) {
    fprintf(stderr, "spool_writer: loading %s: %s\n", lib, err ? err : "?");
    return 2;
  }
  sqlite3_close(boot);

  char uri[8192] = "file:";
  uri_append(uri, sizeof uri, path);
  strncat(uri, "?vfs=spool&backup=", sizeof uri - strlen(uri) - 1);
  uri_append(uri, sizeof uri, backup);
  if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                      NULL) != SQLITE_OK)
    die(uri);
  sqlite3_busy_timeout(db, 30000);

  char sql[256];
  snprintf(sql, sizeof sql, "PRAGMA journal_mode=%s", journal);
  sqlite3_stmt *st = prepare(sql);
  if (sqlite3_step(st) != SQLITE_ROW ||
      sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), journal) != 0) {
    fprintf(stderr, "spool_writer: journal_mode=%s not applied\n", journal);
    return 2;
  }
  sqlite3_finalize(st);

  sqlite3_stmt *s1, *s2, *s3;
  if (transfers) {
    exec("BEGIN IMMEDIATE;"
         "CREATE TABLE IF NOT EXISTS accounts("
         "  id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB);"
         "CREATE TABLE IF NOT EXISTS counter("
         "  id INTEGER PRIMARY KEY CHECK (id = 1), txn_no INTEGER);"
         "INSERT OR IGNORE INTO counter VALUES(1, 0);");
    if (query_int("SELECT count(*) FROM accounts") == 0) {
      snprintf(sql, sizeof sql,
               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d) "
               "INSERT INTO accounts SELECT i, 1000, randomblob(300) FROM n",
               accounts);
      exec(sql);
    }
    exec("COMMIT");
    s1 = prepare("UPDATE accounts SET balance = balance - ?1 WHERE id = ?2");
    s2 = prepare("UPDATE accounts SET balance = balance + ?1 WHERE id = ?2");
    s3 = prepare("UPDATE counter SET txn_no = txn_no + 1");
  } else {
    exec("PRAGMA cache_size=16;"
         "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)");
    s1 = prepare("INSERT INTO t(k, v) VALUES(?1, randomblob(?2))");
    s2 = s3 = NULL;
  }
  printf("%s\n", spool_sync(60000) == 1 ? "READY" : "READY-SYNC-TIMEOUT");
  fflush(stdout);

  double start = now();
  long txn;
  for (txn = 0; txn < ntxn && (seconds <= 0 || now() - start < seconds); txn++) {
    exec("BEGIN IMMEDIATE");
    if (transfers) {
      int a = rnd_range(1, accounts), b = rnd_range(1, accounts - 1), amount = rnd_range(1, 50);
      if (b >= a) b++;
      sqlite3_bind_int(s1, 1, amount);
      sqlite3_bind_int(s1, 2, a);
      run(s1);
      sqlite3_bind_int(s2, 1, amount);
      sqlite3_bind_int(s2, 2, b);
      run(s2);
      run(s3);
    } else {
      for (int i = rnd_range(1, 20); i > 0; i--) {
        sqlite3_bind_int(s1, 1, rnd_range(0, 99));
        sqlite3_bind_int(s1, 2, rnd_range(10, 64 * 1024));
        run(s1);
      }
    }
    exec("COMMIT");
    if ((txn + 1) % 50 == 0) {
      printf("txn %ld\n", txn + 1);
      fflush(stdout);
    }
  }
  sqlite3_finalize(s1);
  sqlite3_finalize(s2);
  sqlite3_finalize(s3);
  int r = spool_sync(60000);
  printf("SYNC %d txns=%ld\n", r, txn);
  fflush(stdout);
  if (sqlite3_close(db) != SQLITE_OK) die("close");
  return r == 1 ? 0 : 3;
}
