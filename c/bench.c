/*
** bench: the measuring half of scripts/bench.sh (scripts/bench.py runs it and does the statistics).
**
** Every subcommand loads the extension (SPOOLVFS_LIB) before opening anything, so an arm through
** the plain `unix` VFS runs in the same process conditions as its `spool` twin, and prints ONE
** JSON object on stdout (`lag` first prints a READY line, `serve` one object per request). Times
** come from CLOCK_MONOTONIC, which is system-wide, so scripts/bench.py can line up timestamps of
** several bench processes. Built with `gcc -O2 -pthread c/bench.c -lsqlite3` against the system
** SQLite: no Python or other harness sits between a transaction and its stopwatch.
**
**   bench info
**   bench disk    DIR MB NSYNC
**   bench writer  VFS JOURNAL SYNC small|bulk N WARMUP DB
**   bench lag     VFS JOURNAL SYNC RATE SECONDS DB [--timeline MS] [--lat-file PATH]
**                 [--warmup S]                    (SIGUSR1 stops the writer early)
**   bench rss     VFS JOURNAL MB DB
**   bench mkdb    DB MB
**   bench serve   DB                              (stdin: "change FRAC SEED" | "quit")
**   bench hold    DB JOURNAL                      (holds DB open through spool until stdin ends)
**   bench copy    backup-all|backup-step|vacuum|rsync SRC DST [--budget S] [--rsync PATH]
**
** VFS is `unix`, `passthru` (c/passthru.c: a shim that only forwards, the floor of any VFS-based
** design) or `spool`; with `spool` the backup is DB.backup and the spool DB-spool (the default).
** RATE 0 means "as fast as one thread can commit"; RATE may be fractional (0.5: one every 2 s). BENCH_BACKUP_DIR=DIR puts spool's backup in DIR;
** BENCH_IDLE_THREAD=1 (or =shared) makes the process multi-threaded with one idle thread (see
** idle_thread_main).
*/
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "passthru.c" /* the `passthru` VFS: the floor cost of any VFS shim */
#include "uri_append.h"

extern char **environ;

#define MS        1000000LL /* nanoseconds per millisecond */
#define SEC       1000000000LL
#define ROW_BYTES 200 /* payload of one small-transaction row */

/* ============================================================================================ */
/* Utilities                                                                                      */
/* ============================================================================================ */

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static void sleep_until(int64_t t_ns) {
  struct timespec ts = {.tv_sec = t_ns / SEC, .tv_nsec = t_ns % SEC};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static double to_ms(int64_t ns) { return (double)ns / (double)MS; }

/* Random bytes that rows are cut from: incompressible, and cheap to bind (SQLITE_STATIC). */
static unsigned char payload[16384];

static void fill_payload(uint64_t seed) {
  uint64_t x = seed | 1;
  for (size_t i = 0; i < sizeof payload; i++) {
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    payload[i] = (unsigned char)((x * 2685821657736338717ULL) >> 56);
  }
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static const unsigned char *row_bytes(long i) { return payload + (size_t)(i * 131) % 8192; }

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile of n values (sorted in place), in milliseconds; 0 for no values. */
static double pct_ms(int64_t *v, long n, double p) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_i64);
  long k = (long)ceil(p * (double)n) - 1;
  return to_ms(v[k < 0 ? 0 : k >= n ? n - 1 : k]);
}

/* ---- JSON output: a flat writer with a comma flag per nesting level ----------------------------
 */

static int json_depth, json_more[8];

static void json_key(const char *k) {
  if (json_more[json_depth]) putchar(',');
  json_more[json_depth] = 1;
  if (k) printf("\"%s\":", k);
}
static void json_open(const char *k) {
  if (json_depth) json_key(k);
  putchar('{');
  json_more[++json_depth] = 0;
}
static void json_close(void) {
  putchar('}');
  if (--json_depth == 0) {
    putchar('\n');
    fflush(stdout);
  }
}
static void json_num(const char *k, double v) {
  json_key(k);
  printf(isfinite(v) ? "%.6g" : "null", v);
}
static void json_int(const char *k, long long v) {
  json_key(k);
  printf("%lld", v);
}
static void json_str(const char *k, const char *v) {
  json_key(k);
  putchar('"');
  for (; v && *v; v++) {
    if (*v == '"' || *v == '\\') putchar('\\');
    putchar((unsigned char)*v < 32 ? '?' : *v);
  }
  putchar('"');
}
/* Latency summary of n samples (nanoseconds, sorted in place): p50, p99, max in ms. */
static void json_latency(const char *k, int64_t *v, long n) {
  json_open(k);
  json_int("n", n);
  json_num("p50_ms", pct_ms(v, n, 0.50));
  json_num("p99_ms", pct_ms(v, n, 0.99));
  json_num("max_ms", pct_ms(v, n, 1.0));
  json_close();
}

/* ---- SQLite helpers ----------------------------------------------------------------------------
 */

/* BENCH_IDLE_THREAD=1 starts one thread that never runs (all signals blocked, parked in pause()).
** It does no work and touches no shared data; it only makes the process multi-threaded, as
** spoolvfs's consumer thread does, and like that thread it first leaves the process's descriptor
** table (unshare(CLONE_FILES), then closes the copies it starts with: src/fdtable.rs). glibc
** still leaves its single-thread fast paths (the mutexes of SQLite and malloc take a locked
** instruction, pwrite and fcntl become cancellation points): the floor of spoolvfs's design, a
** background thread in the application's process. BENCH_IDLE_THREAD=shared keeps the thread on
** the shared table, where the kernel also looks every descriptor up with an atomic reference
** count (what a background thread cost before the consumer left the table). */
static void *idle_thread_main(void *arg) {
  int own_table = arg != NULL;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  if (own_table && unshare(CLONE_FILES) == 0) syscall(SYS_close_range, 3u, ~0u, 0u);
  for (;;) pause();
  return NULL;
}

static void start_idle_thread_if_asked(void) {
  const char *v = getenv("BENCH_IDLE_THREAD");
  if (!v || (strcmp(v, "1") != 0 && strcmp(v, "shared") != 0)) return;
  pthread_t t;
  void *arg = strcmp(v, "1") == 0 ? (void *)1 : NULL; /* non-null: leave the descriptor table */
  if (pthread_create(&t, NULL, idle_thread_main, arg) != 0) die("starting the idle thread");
  pthread_detach(t);
}

static void load_extension(void) {
  const char *lib = getenv("SPOOLVFS_LIB");
  if (!lib) die("SPOOLVFS_LIB is not set");
  sqlite3 *boot;
  char *err = NULL;
  if (sqlite3_open(":memory:", &boot) != SQLITE_OK) die("sqlite3_open(:memory:)");
  sqlite3_enable_load_extension(boot, 1);
  if (sqlite3_load_extension(boot, lib, "sqlite3_spoolvfs_init", &err) != SQLITE_OK)
    die("loading %s: %s", lib, err ? err : "?");
  sqlite3_close(boot);
  if (passthru_register() != SQLITE_OK) die("registering the passthru VFS");
}

/* Open PATH through VFS ("unix" or "spool"; with spool the backup is PATH.backup), read-only with
** READONLY. A 30 s busy timeout makes lock waits show up as latency rather than errors. */
static sqlite3 *open_db(const char *path, const char *vfs, int readonly) {
  char uri[8192] = "file:", backup[4096];
  uri_append(uri, sizeof uri, path);
  strcat(uri, "?vfs=");
  strcat(uri, vfs);
  if (strcmp(vfs, "spool") == 0) {
    /* BENCH_BACKUP_DIR puts the backup on another filesystem (the bench's "backup elsewhere"
       arm); the spool stays beside the database. */
    const char *dir = getenv("BENCH_BACKUP_DIR"), *base = strrchr(path, '/');
    if (dir && *dir)
      snprintf(backup, sizeof backup, "%s/%s.backup", dir, base ? base + 1 : path);
    else
      snprintf(backup, sizeof backup, "%s.backup", path);
    strcat(uri, "&backup=");
    uri_append(uri, sizeof uri, backup);
  }
  if (readonly) strcat(uri, "&mode=ro");
  sqlite3 *db;
  int flags = SQLITE_OPEN_URI |
              (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (sqlite3_open_v2(uri, &db, flags, NULL) != SQLITE_OK)
    die("open %s: %s", uri, sqlite3_errmsg(db));
  sqlite3_busy_timeout(db, 30000);
  return db;
}

static void exec_sql(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) die("%s: %s", sql, err ? err : "?");
}

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
    die("%s: %s", sql, sqlite3_errmsg(db));
  return st;
}

/* Step a statement that returns no rows (or whose rows are ignored) and reset it. */
static void run(sqlite3_stmt *st) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) die("%s: %s", sqlite3_sql(st), sqlite3_errmsg(sqlite3_db_handle(st)));
  sqlite3_reset(st);
}

static sqlite3_int64 query_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = prepare(db, sql);
  if (sqlite3_step(st) != SQLITE_ROW) die("%s: %s", sql, sqlite3_errmsg(db));
  sqlite3_int64 v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static void set_modes(sqlite3 *db, const char *journal, const char *sync) {
  char sql[128];
  snprintf(sql, sizeof sql, "PRAGMA journal_mode=%s", journal);
  sqlite3_stmt *st = prepare(db, sql);
  if (sqlite3_step(st) != SQLITE_ROW ||
      sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), journal) != 0)
    die("journal_mode=%s not applied", journal);
  sqlite3_finalize(st);
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", sync);
  exec_sql(db, sql);
}

static int spool_sync(sqlite3 *db, int timeout_ms) {
  char sql[64];
  snprintf(sql, sizeof sql, "SELECT spool_sync(%d)", timeout_ms);
  return (int)query_int(db, sql);
}

/* The numbers of spool_status() this suite reports. */
struct spool_status {
  double lag_ms, pending, batches, bytes_applied, pages_applied, resyncs, errors, apply_ms;
};

static double json_field(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? strtod(p + strlen(pat), NULL) : NAN;
}

static struct spool_status read_status(sqlite3 *db) {
  struct spool_status s;
  sqlite3_stmt *st = prepare(db, "SELECT spool_status()");
  if (sqlite3_step(st) != SQLITE_ROW) die("spool_status: %s", sqlite3_errmsg(db));
  const char *j = (const char *)sqlite3_column_text(st, 0);
  s.lag_ms = json_field(j, "lag_ms");
  s.pending = json_field(j, "pending");
  s.batches = json_field(j, "batches");
  s.bytes_applied = json_field(j, "bytes_applied");
  s.pages_applied = json_field(j, "pages_applied");
  s.resyncs = json_field(j, "resyncs");
  s.errors = json_field(j, "errors");
  s.apply_ms = json_field(j, "apply_ms");
  sqlite3_finalize(st);
  return s;
}

static void json_status(const char *k, struct spool_status s) {
  json_open(k);
  json_num("lag_ms", s.lag_ms);
  json_num("pending", s.pending);
  json_num("batches", s.batches);
  json_num("bytes_applied", s.bytes_applied);
  json_num("pages_applied", s.pages_applied);
  json_num("resyncs", s.resyncs);
  json_num("errors", s.errors);
  json_close();
}

/* ---- /proc accounting --------------------------------------------------------------------------
 */

/* I/O counters of /proc/<path>/io: rchar/wchar count read()/write() bytes (page cache included),
** read_bytes/write_bytes what reached (or will reach) the block device. */
struct io {
  long long rchar, wchar, read_bytes, write_bytes;
};

static struct io read_io(const char *path) {
  struct io io = {0, 0, 0, 0};
  FILE *f = fopen(path, "r");
  char key[64];
  long long v;
  if (!f) return io;
  while (fscanf(f, "%63[^:]: %lld\n", key, &v) == 2) {
    if (!strcmp(key, "rchar")) io.rchar = v;
    if (!strcmp(key, "wchar")) io.wchar = v;
    if (!strcmp(key, "read_bytes")) io.read_bytes = v;
    if (!strcmp(key, "write_bytes")) io.write_bytes = v;
  }
  fclose(f);
  return io;
}

static struct io io_sub(struct io a, struct io b) {
  return (struct io){a.rchar - b.rchar, a.wchar - b.wchar, a.read_bytes - b.read_bytes,
                     a.write_bytes - b.write_bytes};
}

static void json_io(const char *k, struct io io) {
  json_open(k);
  json_int("rchar", io.rchar);
  json_int("wchar", io.wchar);
  json_int("read_bytes", io.read_bytes);
  json_int("write_bytes", io.write_bytes);
  json_close();
}

/* Thread id of the spool consumer thread of this process (comm is cut to 15 bytes), or 0. */
static long consumer_tid(void) {
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  long tid = 0;
  char path[300], comm[64];
  while (d && !tid && (e = readdir(d))) {
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f && fgets(comm, sizeof comm, f) && strncmp(comm, "spoolvfs-consum", 15) == 0)
      tid = atol(e->d_name);
    if (f) fclose(f);
  }
  if (d) closedir(d);
  return tid;
}

/* CPU seconds (utime + stime) the thread TID has used; 0 if it does not exist. */
static double thread_cpu_s(long tid) {
  char path[128], buf[1024];
  snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
  FILE *f = tid ? fopen(path, "r") : NULL;
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* fields after the command name; utime, stime are 14, 15 */
  unsigned long long ut = 0, st = 0;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static struct io thread_io(long tid) {
  char path[128];
  snprintf(path, sizeof path, "/proc/self/task/%ld/io", tid);
  return read_io(path);
}

/* Peak resident memory of this process image, in MB: VmHWM of /proc/self/status. (getrusage's
** ru_maxrss would do, except that Linux carries the pre-exec RSS of the parent -- here the Python
** harness, ~20 MB -- over fork+exec into it, which hides small peaks.) */
static double peak_rss_mb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kb = NAN;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) kb = atof(line + 6);
  if (f) fclose(f);
  return kb / 1024.0;
}

/* ============================================================================================ */
/* info, disk                                                                                     */
/* ============================================================================================ */

/* Versions of what is measured: the SQLite the driver links and the loaded extension. */
static int cmd_info(void) {
  sqlite3 *db = open_db(":memory:", "unix", 0);
  sqlite3_stmt *st = prepare(db, "SELECT spool_version()");
  json_open(NULL);
  json_str("sqlite", sqlite3_libversion());
  json_str("spoolvfs",
           sqlite3_step(st) == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : "?");
  json_close();
  sqlite3_finalize(st);
  sqlite3_close(db);
  return 0;
}

/* The machine's own limits where the benchmark files live: sequential write bandwidth (MB of 1 MiB
** writes, then one fsync, timed together) and the latency of fsync after a 4 KiB write. They bound
** every other number: a commit in synchronous=FULL cannot be faster than its fsyncs. */
static int cmd_disk(int argc, char **argv) {
  if (argc < 3) die("usage: disk DIR MB NSYNC");
  char path[4096];
  snprintf(path, sizeof path, "%s/disk-probe", argv[0]);
  long mb = atol(argv[1]), nsync = atol(argv[2]);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("open %s: %s", path, strerror(errno));
  static unsigned char block[1 << 20];
  for (size_t i = 0; i < sizeof block; i++)
    block[i] = payload[i % sizeof payload] ^ (unsigned char)i;
  int64_t t0 = now_ns();
  for (long i = 0; i < mb; i++)
    if (write(fd, block, sizeof block) != (ssize_t)sizeof block) die("write: %s", strerror(errno));
  if (fsync(fd)) die("fsync: %s", strerror(errno));
  int64_t seq = now_ns() - t0;
  int64_t *lat = malloc(sizeof *lat * (size_t)nsync);
  for (long i = 0; i < nsync; i++) {
    if (pwrite(fd, block, 4096, (off_t)i * 4096) != 4096) die("pwrite: %s", strerror(errno));
    int64_t t = now_ns();
    if (fsync(fd)) die("fsync: %s", strerror(errno));
    lat[i] = now_ns() - t;
  }
  close(fd);
  unlink(path);
  json_open(NULL);
  json_num("seq_write_mb_s", (double)mb / ((double)seq / SEC));
  json_int("seq_write_mb", mb);
  json_latency("fsync", lat, nsync);
  json_close();
  free(lat);
  return 0;
}

/* ============================================================================================ */
/* writer: writer cost of one arm                                                                 */
/* ============================================================================================ */

/* Prepared statements of one writing connection. */
struct writer {
  sqlite3 *db;
  sqlite3_stmt *begin, *commit, *insert;
};

static struct writer writer_open(const char *vfs, const char *journal, const char *sync,
                                 const char *db_path, const char *table) {
  struct writer w;
  char sql[256];
  w.db = open_db(db_path, vfs, 0);
  set_modes(w.db, journal, sync);
  snprintf(sql, sizeof sql, "CREATE TABLE IF NOT EXISTS %s(id INTEGER PRIMARY KEY, v BLOB)", table);
  exec_sql(w.db, sql);
  w.begin = prepare(w.db, "BEGIN IMMEDIATE");
  w.commit = prepare(w.db, "COMMIT");
  snprintf(sql, sizeof sql, "INSERT INTO %s(id, v) VALUES(?1, ?2)", table);
  w.insert = prepare(w.db, sql);
  if (strcmp(vfs, "spool") == 0 && spool_sync(w.db, 600000) != 1)
    die("initial spool_sync timed out");
  return w;
}

static void writer_close(struct writer *w) {
  sqlite3_finalize(w->begin);
  sqlite3_finalize(w->commit);
  sqlite3_finalize(w->insert);
  if (sqlite3_close(w->db) != SQLITE_OK) die("close: %s", sqlite3_errmsg(w->db));
}

static void insert_row(struct writer *w, long id, int bytes) {
  sqlite3_bind_int64(w->insert, 1, id);
  sqlite3_bind_blob(w->insert, 2, row_bytes(id), bytes, SQLITE_STATIC);
  run(w->insert);
}

/* One transaction of ROWS rows of BYTES bytes with ids from *next_id; returns the time its COMMIT
** took in *commit_ns and the whole transaction's time (BEGIN to end of COMMIT) as result. */
static int64_t write_txn(struct writer *w, long *next_id, long rows, int bytes,
                         int64_t *commit_ns) {
  int64_t t0 = now_ns();
  run(w->begin);
  for (long r = 0; r < rows; r++) insert_row(w, (*next_id)++, bytes);
  int64_t tc = now_ns();
  run(w->commit);
  int64_t t1 = now_ns();
  if (commit_ns) *commit_ns = t1 - tc;
  return t1 - t0;
}

/* What the backup's consumer costs and delivers: after everything is in the backup, one more bulk
** transaction of ROWS rows is committed and waited for (spool_sync). The page bytes applied and
** the consumer's own busy time for them (spool_status apply_ms: reading the batches out of the
** spool through the backup's last fsync) give its apply throughput (MB/s of page images); the
** consumer thread's CPU gives CPU per GB. The time from the end of COMMIT to spool_sync()==1 is
** kept too, but it is not the apply time: in WAL mode COMMIT returns only after the
** autocheckpoint it triggers, and the consumer applies meanwhile. */
static void measure_consumer(struct writer *w, long *next_id, long rows) {
  if (spool_sync(w->db, 600000) != 1) die("spool_sync timed out");
  long tid = consumer_tid();
  struct spool_status s0 = read_status(w->db);
  double cpu0 = thread_cpu_s(tid);
  write_txn(w, next_id, rows, ROW_BYTES, NULL);
  int64_t t0 = now_ns();
  if (spool_sync(w->db, 600000) != 1) die("spool_sync timed out");
  double secs = (double)(now_ns() - t0) / SEC;
  struct spool_status s1 = read_status(w->db);
  double mb = (s1.bytes_applied - s0.bytes_applied) / 1e6, cpu = thread_cpu_s(tid) - cpu0;
  json_open("consumer");
  json_num("drain_s", secs);
  json_num("applied_mb", mb);
  json_num("pages_applied", s1.pages_applied - s0.pages_applied);
  json_num("batches", s1.batches - s0.batches);
  double busy_s = (s1.apply_ms - s0.apply_ms) / 1000;
  json_num("apply_busy_s", busy_s);
  json_num("apply_mb_s", busy_s > 0 ? mb / busy_s : NAN);
  json_num("cpu_s", cpu);
  json_num("cpu_s_per_gb", mb > 0 ? cpu / (mb / 1000) : NAN);
  json_int("thread_found", tid != 0);
  json_close();
}

/* Writer cost of one arm. small: WARMUP then N transactions of one 200-byte row each, every one
** timed BEGIN..COMMIT (its latency; throughput = N / total time). bulk: one warm-up transaction of
** N/10 rows, then 3 transactions of N rows each (rows/s; latency per transaction and per COMMIT).
** With spool the bulk arm also measures the consumer (measure_consumer). The extension is loaded
** in both arms; only the VFS differs. */
static int cmd_writer(int argc, char **argv) {
  if (argc < 7) die("usage: writer VFS JOURNAL SYNC small|bulk N WARMUP DB");
  const char *vfs = argv[0], *journal = argv[1], *sync = argv[2], *kind = argv[3];
  long n = atol(argv[4]), warmup = atol(argv[5]), next_id = 1;
  int bulk = strcmp(kind, "bulk") == 0, spool = strcmp(vfs, "spool") == 0;
  struct writer w = writer_open(vfs, journal, sync, argv[6], "t");
  long txns = bulk ? 3 : n, rows = bulk ? n : 1;
  int64_t *lat = malloc(sizeof *lat * (size_t)txns), *clat = malloc(sizeof *clat * (size_t)txns);
  if (bulk)
    write_txn(&w, &next_id, n / 10, ROW_BYTES, NULL);
  else
    for (long i = 0; i < warmup; i++) write_txn(&w, &next_id, 1, ROW_BYTES, NULL);
  /* The writer thread's own CPU time (user + system) over the measured transactions: unlike wall
  ** time it leaves out waiting (fsync, a descheduled vCPU), so it shows what the extension adds to
  ** the application's thread with far less run-to-run noise. */
  struct timespec c0, c1;
  /* spool: the consumer thread's CPU over the same span (the other core's share it takes). */
  long ctid = spool ? consumer_tid() : 0;
  double ccpu0 = thread_cpu_s(ctid);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  int64_t t0 = now_ns();
  for (long i = 0; i < txns; i++) lat[i] = write_txn(&w, &next_id, rows, ROW_BYTES, &clat[i]);
  double secs = (double)(now_ns() - t0) / SEC;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  double cpu_s = (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) / SEC;
  double consumer_cpu_s = ctid ? thread_cpu_s(ctid) - ccpu0 : NAN;
  json_open(NULL);
  json_str("vfs", vfs);
  json_str("journal", journal);
  json_str("sync", sync);
  json_str("workload", kind);
  json_int("txns", txns);
  json_int("rows_per_txn", rows);
  json_num("seconds", secs);
  json_num("txn_per_s", (double)txns / secs);
  json_num("rows_per_s", (double)(txns * rows) / secs);
  json_num("writer_cpu_s", cpu_s);
  json_num("cpu_us_per_row", cpu_s * 1e6 / (double)(txns * rows));
  json_num("consumer_cpu_share", consumer_cpu_s / secs);
  json_latency("txn_latency", lat, txns);
  json_latency("commit_latency", clat, txns);
  if (spool && bulk) measure_consumer(&w, &next_id, n);
  if (spool) json_status("status", read_status(w.db));
  json_close();
  writer_close(&w);
  free(lat);
  free(clat);
  return 0;
}

/* ============================================================================================ */
/* lag: a paced writer and an external poller of the backup                                       */
/* ============================================================================================ */

/* Shared state of one paced run. Index i (0-based) is the transaction that inserts id base+1+i. */
struct lagrun {
  struct writer w;
  char *backup; /* spool only: the backup the poller reads */
  long base, cap;
  double rate; /* transactions per second, 0: unpaced */
  int64_t deadline;
  atomic_long committed; /* transactions committed so far */
  atomic_int stop_poller;
  int64_t *start_ns, *commit_ns, *seen_ns; /* per transaction; seen_ns: first seen in the backup */
  long polls, busy_polls;
  sqlite3 *status_db; /* spool only: separate connection for spool_status() samples */
  long nstatus;
  int64_t status_t[100000];
  double status_lag[100000];
};

/* Set by SIGUSR1: scripts/bench.py stops a writer that runs beside a copy once the copy is done. */
static volatile sig_atomic_t stop_requested;
static void on_sigusr1(int sig) { stop_requested = sig; }

/* The writer: transaction i starts at t0 + i/RATE (at once when behind; RATE 0: no pacing), inserts
** one row, commits; the time COMMIT returned is its commit time. Stops at the deadline or SIGUSR1.
*/
static void *writer_main(void *arg) {
  struct lagrun *r = arg;
  int64_t t0 = now_ns(), period = r->rate > 0 ? (int64_t)((double)SEC / r->rate) : 0;
  long next_id = r->base + 1;
  for (long i = 0; i < r->cap; i++) {
    int64_t due = t0 + period * i;
    if (period && now_ns() < due) sleep_until(due);
    int64_t start = now_ns();
    if (start >= r->deadline || stop_requested) break;
    r->start_ns[i] = start;
    write_txn(&r->w, &next_id, 1, ROW_BYTES, NULL);
    r->commit_ns[i] = now_ns();
    atomic_store(&r->committed, i + 1);
  }
  return NULL;
}

/* The poller: a plain-VFS read-only connection to the BACKUP (as any reader of the backup would
** have) reads max(id) about every millisecond; every id seen for the first time gets that poll's
** end time. A poll that finds the backup locked (an apply in progress) just counts as busy. Every
** 100 ms it also samples spool_status()'s own lag_ms for comparison. */
static void *poller_main(void *arg) {
  struct lagrun *r = arg;
  sqlite3 *db = open_db(r->backup, "unix", 1);
  sqlite3_busy_timeout(db, 0);
  sqlite3_stmt *st = NULL;
  long seen = 0;
  int64_t next_status = 0;
  while (!atomic_load(&r->stop_poller)) {
    if (!st && sqlite3_prepare_v2(db, "SELECT max(id) FROM w", -1, &st, NULL) != SQLITE_OK)
      st = NULL;
    if (st) {
      int rc = sqlite3_step(st);
      int64_t t = now_ns();
      if (rc == SQLITE_ROW) {
        long top = (long)sqlite3_column_int64(st, 0) - r->base;
        for (; seen < top && seen < r->cap; seen++) r->seen_ns[seen] = t;
      } else {
        r->busy_polls++;
      }
      sqlite3_reset(st);
      r->polls++;
    }
    int64_t t = now_ns();
    if (r->status_db && t >= next_status && r->nstatus < 100000) {
      r->status_t[r->nstatus] = t;
      r->status_lag[r->nstatus++] = read_status(r->status_db).lag_ms;
      next_status = t + 100 * MS;
    }
    sleep_until(t + MS);
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return NULL;
}

/* Per-bucket series for the plot: transactions committed, and the worst external lag of those. */
static void json_timeline(struct lagrun *r, long n, int64_t t0, long bucket_ms) {
  long nb = n ? (long)((r->commit_ns[n - 1] - t0) / (bucket_ms * MS)) + 1 : 0;
  long *count = calloc((size_t)nb + 1, sizeof *count);
  double *worst = calloc((size_t)nb + 1, sizeof *worst);
  for (long i = 0; i < n; i++) {
    long b = (long)((r->commit_ns[i] - t0) / (bucket_ms * MS));
    count[b]++;
    if (r->seen_ns[i]) {
      double lag = to_ms(r->seen_ns[i] - r->commit_ns[i]);
      if (lag > worst[b]) worst[b] = lag;
    }
  }
  json_open("timeline");
  json_int("bucket_ms", bucket_ms);
  json_key("txns");
  for (long b = 0; b < nb; b++) printf("%c%ld", b ? ',' : '[', count[b]);
  printf(nb ? "]" : "[]");
  json_key("lag_max_ms");
  for (long b = 0; b < nb; b++) printf("%c%.3f", b ? ',' : '[', worst[b]);
  printf(nb ? "]" : "[]");
  json_key("status_t_s");
  for (long s = 0; s < r->nstatus; s++)
    printf("%c%.3f", s ? ',' : '[', (double)(r->status_t[s] - t0) / SEC);
  printf(r->nstatus ? "]" : "[]");
  json_key("status_lag_ms");
  for (long s = 0; s < r->nstatus; s++) printf("%c%.0f", s ? ',' : '[', r->status_lag[s]);
  printf(r->nstatus ? "]" : "[]");
  json_close();
  free(count);
  free(worst);
}

/* Write "start_ns latency_ns" per transaction, for windows chosen by scripts/bench.py. */
static void write_latencies(const char *path, struct lagrun *r, long n) {
  FILE *f = fopen(path, "w");
  if (!f) die("open %s: %s", path, strerror(errno));
  for (long i = 0; i < n; i++)
    fprintf(f, "%lld %lld\n", (long long)r->start_ns[i],
            (long long)(r->commit_ns[i] - r->start_ns[i]));
  fclose(f);
}

/* Open the writer, the spool_status() monitor connection and the per-transaction arrays. */
static struct lagrun *lag_setup(const char *vfs, const char *journal, const char *sync, double rate,
                                double seconds, const char *db_path) {
  struct lagrun *r = calloc(1, sizeof *r);
  r->w = writer_open(vfs, journal, sync, db_path, "w");
  r->rate = rate;
  r->base = (long)query_int(r->w.db, "SELECT coalesce(max(id), 0) FROM w");
  r->cap = (long)((rate > 0 ? rate : 250000) * seconds * 1.1) + 1000;
  r->start_ns = calloc((size_t)r->cap, sizeof(int64_t));
  r->commit_ns = calloc((size_t)r->cap, sizeof(int64_t));
  r->seen_ns = calloc((size_t)r->cap, sizeof(int64_t));
  if (strcmp(vfs, "spool") == 0) {
    r->backup = sqlite3_mprintf("%s.backup", db_path);
    r->status_db = open_db(db_path, "spool", 0);
    read_status(r->status_db); /* loads the schema now: later that lock could wait for the writer */
  }
  return r;
}

/* After the writer stopped: wait for the backup to have everything (spool_sync) and for the
** poller to have seen the last transaction (at most 10 s), then stop the poller. Returns the
** spool_sync() time in ms, or -1 if it timed out. */
static double lag_drain(struct lagrun *r, long n, pthread_t poller) {
  int64_t ts = now_ns();
  int synced = spool_sync(r->w.db, 120000);
  double sync_ms = to_ms(now_ns() - ts);
  for (int64_t give_up = now_ns() + 10 * SEC; now_ns() < give_up && n && !r->seen_ns[n - 1];)
    sleep_until(now_ns() + MS);
  atomic_store(&r->stop_poller, 1);
  pthread_join(poller, NULL);
  return synced ? sync_ms : -1;
}

/* Commit latency and (spool) backup lag of the transactions started after the warm-up. */
static void json_lag_stats(struct lagrun *r, long n, int64_t from_ns) {
  int64_t *lat = malloc(sizeof *lat * (size_t)(n + 1)),
          *lag = malloc(sizeof *lag * (size_t)(n + 1));
  long nlat = 0, nlag = 0, unseen = 0;
  for (long i = 0; i < n; i++) {
    if (r->start_ns[i] < from_ns) continue;
    lat[nlat++] = r->commit_ns[i] - r->start_ns[i];
    if (!r->seen_ns[i])
      unseen++;
    else /* a poll may end a hair before the writer reads its clock after COMMIT: count as 0 */
      lag[nlag++] = r->seen_ns[i] > r->commit_ns[i] ? r->seen_ns[i] - r->commit_ns[i] : 0;
  }
  json_latency("txn_latency", lat, nlat);
  if (r->status_db) {
    json_latency("lag", lag, nlag);
    json_int("lag_unseen", unseen);
  }
  free(lat);
  free(lag);
}

/* What the extension says about itself over the run, next to the external measurement. */
static void json_lag_spool(struct lagrun *r, struct spool_status s0, struct spool_status s_end,
                           double wall, double cpu_s, double sync_ms, int64_t from_ns) {
  double smax = 0;
  for (long s = 0; s < r->nstatus; s++)
    if (r->status_t[s] >= from_ns && r->status_lag[s] > smax) smax = r->status_lag[s];
  json_int("polls", r->polls);
  json_int("busy_polls", r->busy_polls);
  json_num("status_lag_ms_max", smax);
  json_num("pending_at_end", s_end.pending);
  json_num("lag_ms_at_end", s_end.lag_ms);
  json_num("batches", s_end.batches - s0.batches);
  json_num("applied_mb_s", (s_end.bytes_applied - s0.bytes_applied) / 1e6 / wall);
  json_num("consumer_cpu_s", cpu_s);
  json_num("consumer_cpu_pct", 100 * cpu_s / wall);
  json_num("final_sync_ms", sync_ms);
  json_status("status", read_status(r->w.db));
}

/* Freshness of the backup. A writer thread commits one-row transactions at RATE per second for
** SECONDS; with spool a poller thread measures, from outside, when each transaction becomes
** visible in the backup: lag = first seen - commit time, p50/p99/max over the transactions
** started after WARMUP seconds (the timeline keeps them all). It also reports what
** spool_status() says, the page bytes applied per second and the consumer thread's CPU. Prints
** READY when the writer starts, then the JSON result. */
static int cmd_lag(int argc, char **argv) {
  if (argc < 6) die("usage: lag VFS JOURNAL SYNC RATE SECONDS DB [--OPTION VALUE]...");
  const char *vfs = argv[0], *lat_file = NULL;
  long bucket_ms = 0;
  double seconds = atof(argv[4]), warmup = 0;
  for (int a = 6; a + 1 < argc; a += 2) {
    if (!strcmp(argv[a], "--timeline")) bucket_ms = atol(argv[a + 1]);
    if (!strcmp(argv[a], "--lat-file")) lat_file = argv[a + 1];
    if (!strcmp(argv[a], "--warmup")) warmup = atof(argv[a + 1]);
  }
  struct lagrun *r = lag_setup(vfs, argv[1], argv[2], atof(argv[3]), seconds, argv[5]);
  int spool = r->status_db != NULL;
  struct spool_status s0 = spool ? read_status(r->w.db) : (struct spool_status){0};
  long tid = spool ? consumer_tid() : 0;
  double cpu0 = thread_cpu_s(tid);
  struct sigaction sa = {.sa_handler = on_sigusr1, .sa_flags = SA_RESTART};
  sigaction(SIGUSR1, &sa, NULL);
  pthread_t writer, poller;
  if (spool) pthread_create(&poller, NULL, poller_main, r);
  printf("READY\n");
  fflush(stdout);
  int64_t t0 = now_ns();
  r->deadline = t0 + (int64_t)(seconds * SEC);
  pthread_create(&writer, NULL, writer_main, r);
  pthread_join(writer, NULL);
  long n = atomic_load(&r->committed);
  double wall = (double)(r->commit_ns[n ? n - 1 : 0] - t0) / SEC;
  struct spool_status s_end = spool ? read_status(r->w.db) : s0;
  double cpu_s = thread_cpu_s(tid) - cpu0, sync_ms = spool ? lag_drain(r, n, poller) : 0;
  if (lat_file) write_latencies(lat_file, r, n);
  json_open(NULL);
  json_str("vfs", vfs);
  json_str("journal", argv[1]);
  json_str("sync", argv[2]);
  json_num("target_rate", r->rate);
  json_int("txns", n);
  json_num("seconds", wall);
  json_num("achieved_rate", wall > 0 ? (double)n / wall : 0);
  json_num("warmup_s", warmup);
  json_lag_stats(r, n, t0 + (int64_t)(warmup * SEC));
  if (spool) json_lag_spool(r, s0, s_end, wall, cpu_s, sync_ms, t0 + (int64_t)(warmup * SEC));
  if (bucket_ms) json_timeline(r, n, t0, bucket_ms);
  json_close();
  if (r->status_db) sqlite3_close(r->status_db);
  writer_close(&r->w);
  return 0;
}

/* hold: the first opener of DB through spool (so its consumer is the active one), idle until its
** stdin ends: a `lag` run started after it commits from a second process, whose seals must wake
** this process's parked consumer. Prints READY once the database is open and synced. */
static int cmd_hold(int argc, char **argv) {
  if (argc < 2) die("usage: hold DB JOURNAL");
  struct writer w = writer_open("spool", argv[1], "normal", argv[0], "w");
  printf("READY\n");
  fflush(stdout);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
  }
  writer_close(&w);
  return 0;
}

/* ============================================================================================ */
/* rss: peak memory of one huge transaction                                                       */
/* ============================================================================================ */

/* Peak RSS (VmHWM, see peak_rss_mb) of a process that inserts MB megabytes of 4000-byte blobs (one
** page each) in ONE transaction; with spool it also waits until the backup has it, so the peak
** covers capture, spooling and applying. Compared with the plain arm it proves how much memory
** the extension adds for a transaction larger than any buffer. */
static int cmd_rss(int argc, char **argv) {
  if (argc < 4) die("usage: rss VFS JOURNAL MB DB");
  const char *vfs = argv[0];
  long rows = atol(argv[2]) * 1000000L / 4000, next_id = 1;
  struct writer w = writer_open(vfs, argv[1], "normal", argv[3], "t");
  double base = peak_rss_mb();
  int64_t t0 = now_ns();
  write_txn(&w, &next_id, rows, 4000, NULL);
  double txn_s = (double)(now_ns() - t0) / SEC;
  int64_t t1 = now_ns();
  int synced = strcmp(vfs, "spool") == 0 ? spool_sync(w.db, 3600000) : 1;
  double sync_s = (double)(now_ns() - t1) / SEC;
  json_open(NULL);
  json_str("vfs", vfs);
  json_str("journal", argv[1]);
  json_int("rows", rows);
  json_num("txn_mb", (double)rows * 4000 / 1e6);
  json_num("rss_before_mb", base);
  json_num("peak_rss_mb", peak_rss_mb());
  json_num("txn_s", txn_s);
  json_num("sync_s", sync_s);
  json_int("synced", synced);
  json_close();
  writer_close(&w);
  return 0;
}

/* ============================================================================================ */
/* mkdb, serve, copy: bringing a backup of a big database up to date                              */
/* ============================================================================================ */

#define BIG_ROW 1000 /* bytes per row of the big database: about 4 rows per 4 KiB page */

/* Create DB (plain VFS, rollback journal) with rows of 1000 random bytes until it holds MB MB. */
static int cmd_mkdb(int argc, char **argv) {
  if (argc < 2) die("usage: mkdb DB MB");
  struct writer w = writer_open("unix", "delete", "off", argv[0], "t");
  long rows = atol(argv[1]) * 1000000L / (BIG_ROW + 40), next_id = 1;
  int64_t t0 = now_ns();
  while (next_id <= rows) {
    long left = rows - next_id + 1;
    write_txn(&w, &next_id, left < 10000 ? left : 10000, BIG_ROW, NULL);
  }
  json_open(NULL);
  json_int("rows", rows);
  json_int("pages", query_int(w.db, "PRAGMA page_count"));
  json_int("page_size", query_int(w.db, "PRAGMA page_size"));
  json_num("seconds", (double)(now_ns() - t0) / SEC);
  json_close();
  writer_close(&w);
  return 0;
}

/* Update round(pages * FRAC) random rows (about that many pages) in one transaction. */
static long change_rows(struct writer *w, double frac, sqlite3_int64 pages, sqlite3_int64 rows) {
  long k = (long)llround((double)pages * frac);
  if (k < 1) k = 1;
  sqlite3_stmt *up = prepare(w->db, "UPDATE t SET v = ?2 WHERE id = ?1");
  run(w->begin);
  for (long i = 0; i < k; i++) {
    sqlite3_int64 id = 1 + (sqlite3_int64)(rnd() % (uint64_t)rows);
    sqlite3_bind_int64(up, 1, id);
    sqlite3_bind_blob(up, 2, row_bytes((long)rnd()), BIG_ROW, SQLITE_STATIC);
    run(up);
  }
  run(w->commit);
  sqlite3_finalize(up);
  return k;
}

/* spoolvfs's side of "bring the backup up to date": keeps DB open through spool (so the one-time
** comparison at first open is paid once, at start, and reported as seed_s), then per request
** "change FRAC SEED" changes about FRAC of the pages in one transaction and measures the time from
** its commit to spool_sync()==1, the pages and bytes applied (spool_status) and the consumer
** thread's own I/O counters. Bytes written to the backup are pages*page_size plus the backup's
** rollback journal (pre-images, pages*(page_size+8) plus a header), reported as written_est. */
static int cmd_serve(int argc, char **argv) {
  if (argc < 1) die("usage: serve DB");
  struct writer w;
  w.db = open_db(argv[0], "spool", 0);
  w.begin = prepare(w.db, "BEGIN IMMEDIATE");
  w.commit = prepare(w.db, "COMMIT");
  w.insert = NULL;
  int64_t t0 = now_ns();
  if (spool_sync(w.db, 3600000) != 1) die("seed spool_sync timed out");
  sqlite3_int64 pages = query_int(w.db, "PRAGMA page_count"),
                psz = query_int(w.db, "PRAGMA page_size");
  sqlite3_int64 rows = query_int(w.db, "SELECT max(id) FROM t");
  json_open(NULL);
  json_num("seed_s", (double)(now_ns() - t0) / SEC);
  json_int("pages", pages);
  json_int("page_size", psz);
  json_close();
  char line[256];
  double frac;
  unsigned long long seed;
  while (fgets(line, sizeof line, stdin) && sscanf(line, "change %lf %llu", &frac, &seed) == 2) {
    rng = seed * 0x9E3779B97F4A7C15ULL | 1;
    long tid = consumer_tid();
    struct spool_status s0 = read_status(w.db);
    struct io io0 = thread_io(tid);
    double cpu0 = thread_cpu_s(tid);
    long k = change_rows(&w, frac, pages, rows);
    int64_t tc = now_ns();
    int synced = spool_sync(w.db, 600000);
    int64_t td = now_ns();
    struct spool_status s1 = read_status(w.db);
    double np = s1.pages_applied - s0.pages_applied;
    json_open(NULL);
    json_num("frac", frac);
    json_int("rows_updated", k);
    json_int("synced", synced);
    json_num("wall_ms", to_ms(td - tc));
    json_num("pages_applied", np);
    json_num("bytes_applied", s1.bytes_applied - s0.bytes_applied);
    json_num("written_est", np * (double)psz + np * (double)(psz + 8) + 512);
    json_num("batches", s1.batches - s0.batches);
    json_num("cpu_s", thread_cpu_s(tid) - cpu0);
    json_io("io", io_sub(thread_io(tid), io0));
    json_close();
  }
  writer_close(&w);
  return 0;
}

/* Online Backup API into DST: step(-1) (all pages in one read transaction) or step(100) in a loop,
** the documented incremental way. A change of SRC by any other connection between two steps
** restarts the copy from page 1; a restart shows as remaining() going up. Gives up at DEADLINE. */
static void copy_backup_api(const char *src, const char *dst, int npages, int64_t deadline,
                            long *steps, long *restarts, int *finished) {
  sqlite3 *s = open_db(src, "unix", 1), *d = open_db(dst, "unix", 0);
  sqlite3_backup *b = sqlite3_backup_init(d, "main", s, "main");
  if (!b) die("backup_init: %s", sqlite3_errmsg(d));
  int rc, prev = -1;
  do {
    rc = sqlite3_backup_step(b, npages);
    ++*steps;
    int rem = sqlite3_backup_remaining(b);
    if (prev >= 0 && rem > prev) ++*restarts;
    prev = rem;
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
      sleep_until(now_ns() + MS);
    else if (rc != SQLITE_OK && rc != SQLITE_DONE)
      die("backup_step: %s", sqlite3_errstr(rc));
  } while (rc != SQLITE_DONE && now_ns() < deadline);
  *finished = rc == SQLITE_DONE;
  sqlite3_backup_finish(b);
  sqlite3_close(s);
  sqlite3_close(d);
}

/* VACUUM INTO a fresh DST: a compacted full copy in one read transaction. */
static void copy_vacuum(const char *src, const char *dst) {
  unlink(dst);
  sqlite3 *s = open_db(src, "unix", 1);
  char *sql = sqlite3_mprintf("VACUUM INTO %Q", dst);
  exec_sql(s, sql);
  sqlite3_free(sql);
  sqlite3_close(s);
}

/* sqlite3_rsync SRC DST as a child process (its output discarded). Its I/O lands in this process's
** /proc/self/io when it is reaped, so the caller's counters include it. Killed at DEADLINE. */
static int copy_rsync(const char *exe, const char *src, const char *dst, int64_t deadline) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  char *args[] = {(char *)exe, (char *)src, (char *)dst, NULL};
  pid_t pid;
  if (posix_spawn(&pid, exe, &fa, NULL, args, environ) != 0)
    die("spawn %s: %s", exe, strerror(errno));
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (now_ns() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return 0;
    }
    sleep_until(now_ns() + MS);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("%s exited with status %d", exe, status);
  return 1;
}

/* One way of bringing DST up to date with SRC, in a process of its own so that /proc/self/io
** counts exactly its work: wall time, bytes read and written, and for the backup API the steps
** and restarts. t_start_ns/t_end_ns bound the work on the shared monotonic clock. */
static int cmd_copy(int argc, char **argv) {
  if (argc < 3) die("usage: copy METHOD SRC DST [--budget S] [--rsync PATH]");
  const char *method = argv[0], *src = argv[1], *dst = argv[2], *rsync = "sqlite3_rsync";
  double budget = 3600;
  for (int a = 3; a + 1 < argc; a += 2) {
    if (!strcmp(argv[a], "--budget")) budget = atof(argv[a + 1]);
    if (!strcmp(argv[a], "--rsync")) rsync = argv[a + 1];
  }
  long steps = 0, restarts = 0;
  int finished = 1;
  struct io io0 = read_io("/proc/self/io");
  int64_t t0 = now_ns(), deadline = t0 + (int64_t)(budget * SEC);
  if (!strcmp(method, "backup-all"))
    copy_backup_api(src, dst, -1, deadline, &steps, &restarts, &finished);
  else if (!strcmp(method, "backup-step"))
    copy_backup_api(src, dst, 100, deadline, &steps, &restarts, &finished);
  else if (!strcmp(method, "vacuum"))
    copy_vacuum(src, dst);
  else if (!strcmp(method, "rsync"))
    finished = copy_rsync(rsync, src, dst, deadline);
  else
    die("unknown copy method %s", method);
  int64_t t1 = now_ns();
  json_open(NULL);
  json_str("method", method);
  json_int("finished", finished);
  json_num("wall_ms", to_ms(t1 - t0));
  json_int("t_start_ns", t0);
  json_int("t_end_ns", t1);
  json_int("steps", steps);
  json_int("restarts", restarts);
  json_io("io", io_sub(read_io("/proc/self/io"), io0));
  json_close();
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) die("usage: bench info|disk|writer|lag|rss|mkdb|serve|hold|copy ARGS (see c/bench.c)");
  const char *cmd = argv[1];
  fill_payload(0x5eed);
  load_extension();
  start_idle_thread_if_asked();
  argc -= 2, argv += 2;
  if (!strcmp(cmd, "info")) return cmd_info();
  if (!strcmp(cmd, "disk")) return cmd_disk(argc, argv);
  if (!strcmp(cmd, "writer")) return cmd_writer(argc, argv);
  if (!strcmp(cmd, "lag")) return cmd_lag(argc, argv);
  if (!strcmp(cmd, "rss")) return cmd_rss(argc, argv);
  if (!strcmp(cmd, "mkdb")) return cmd_mkdb(argc, argv);
  if (!strcmp(cmd, "serve")) return cmd_serve(argc, argv);
  if (!strcmp(cmd, "hold")) return cmd_hold(argc, argv);
  if (!strcmp(cmd, "copy")) return cmd_copy(argc, argv);
  die("unknown command %s", cmd);
}
