/*
** passthru: the cheapest possible VFS shim, for measuring what wrapping the unix VFS costs at all.
**
** scripts/bench.py runs the writer-cost workloads through three VFSes in one run: `unix` (plain),
** `passthru` (this file: every call forwarded to unix, nothing else done) and `spool`. The
** passthru/unix ratio is the floor of any design that, like spoolvfs, observes SQLite through a
** VFS: one extra indirect call per VFS method, nothing captured. It is written in C, with no
** unwinding guard and no state beyond the real file, so the floor it measures is not inflated by
** anything spoolvfs-specific.
**
** Not part of the product: bench.c includes it and registers the VFS as "passthru" (not default);
** c/passthru_ext.c builds it as a loadable extension that stacks it above `spool`, for the tests of
** a VFS layered over spool.
*/
#include <sqlite3.h>
#include <string.h>

/* An open file: our header first (SQLite sees this), the real unix file right behind it. */
struct pt_file {
  sqlite3_file base;
  sqlite3_file *real;
};

static sqlite3_vfs *pt_real_vfs;

#define REAL(f) (((struct pt_file *)(f))->real)

static int pt_close(sqlite3_file *f) {
  return REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
}
static int pt_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) {
  return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int pt_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o) {
  return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int pt_truncate(sqlite3_file *f, sqlite3_int64 s) {
  return REAL(f)->pMethods->xTruncate(REAL(f), s);
}
static int pt_sync(sqlite3_file *f, int fl) { return REAL(f)->pMethods->xSync(REAL(f), fl); }
static int pt_file_size(sqlite3_file *f, sqlite3_int64 *s) {
  return REAL(f)->pMethods->xFileSize(REAL(f), s);
}
static int pt_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int pt_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int pt_check_reserved(sqlite3_file *f, int *r) {
  return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r);
}
/* Nonzero: answer SQLITE_NOTFOUND to file-control opcodes that are not SQLite's own (all of
** SQLite's are small numbers) instead of forwarding them, as a shim that only knows SQLite's
** opcodes would. Set by tests (c/passthru_ext.c) to check spoolvfs's fallback for such a shim. */
static int pt_refuse_foreign_fcntl = 0;

static int pt_file_control(sqlite3_file *f, int op, void *a) {
  if (pt_refuse_foreign_fcntl && op >= 1000) return SQLITE_NOTFOUND;
  return REAL(f)->pMethods->xFileControl(REAL(f), op, a);
}
static int pt_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int pt_device_characteristics(sqlite3_file *f) {
  return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int pt_shm_map(sqlite3_file *f, int i, int sz, int ext, void volatile **pp) {
  return REAL(f)->pMethods->xShmMap(REAL(f), i, sz, ext, pp);
}
static int pt_shm_lock(sqlite3_file *f, int o, int n, int fl) {
  return REAL(f)->pMethods->xShmLock(REAL(f), o, n, fl);
}
static void pt_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int pt_shm_unmap(sqlite3_file *f, int del) {
  return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int pt_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **pp) {
  return REAL(f)->pMethods->xFetch(REAL(f), o, n, pp);
}
static int pt_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) {
  return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}

static const sqlite3_io_methods pt_methods = {
    3,           pt_close,          pt_read,       pt_write,          pt_truncate,
    pt_sync,     pt_file_size,      pt_lock,       pt_unlock,         pt_check_reserved,
    pt_file_control, pt_sector_size, pt_device_characteristics, pt_shm_map, pt_shm_lock,
    pt_shm_barrier, pt_shm_unmap,   pt_fetch,      pt_unfetch,
};

static int pt_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out) {
  struct pt_file *p = (struct pt_file *)f;
  p->real = (sqlite3_file *)&p[1];
  memset(p->real, 0, (size_t)pt_real_vfs->szOsFile);
  int rc = pt_real_vfs->xOpen(pt_real_vfs, name, p->real, flags, out);
  /* The unix VFS's methods are all version 3; a file it failed to open gets no methods. */
  p->base.pMethods = p->real->pMethods ? &pt_methods : NULL;
  (void)vfs;
  return rc;
}
static int pt_delete(sqlite3_vfs *v, const char *n, int s) {
  (void)v;
  return pt_real_vfs->xDelete(pt_real_vfs, n, s);
}
static int pt_access(sqlite3_vfs *v, const char *n, int fl, int *r) {
  (void)v;
  return pt_real_vfs->xAccess(pt_real_vfs, n, fl, r);
}
static int pt_full_pathname(sqlite3_vfs *v, const char *n, int sz, char *out) {
  (void)v;
  return pt_real_vfs->xFullPathname(pt_real_vfs, n, sz, out);
}
static void *pt_dl_open(sqlite3_vfs *v, const char *n) {
  (void)v;
  return pt_real_vfs->xDlOpen(pt_real_vfs, n);
}
static void pt_dl_error(sqlite3_vfs *v, int n, char *m) {
  (void)v;
  pt_real_vfs->xDlError(pt_real_vfs, n, m);
}
static void (*pt_dl_sym(sqlite3_vfs *v, void *h, const char *s))(void) {
  (void)v;
  return pt_real_vfs->xDlSym(pt_real_vfs, h, s);
}
static void pt_dl_close(sqlite3_vfs *v, void *h) {
  (void)v;
  pt_real_vfs->xDlClose(pt_real_vfs, h);
}
static int pt_randomness(sqlite3_vfs *v, int n, char *out) {
  (void)v;
  return pt_real_vfs->xRandomness(pt_real_vfs, n, out);
}
static int pt_sleep(sqlite3_vfs *v, int us) {
  (void)v;
  return pt_real_vfs->xSleep(pt_real_vfs, us);
}
static int pt_current_time(sqlite3_vfs *v, double *t) {
  (void)v;
  return pt_real_vfs->xCurrentTime(pt_real_vfs, t);
}
static int pt_get_last_error(sqlite3_vfs *v, int n, char *m) {
  (void)v;
  return pt_real_vfs->xGetLastError(pt_real_vfs, n, m);
}
static int pt_current_time_int64(sqlite3_vfs *v, sqlite3_int64 *t) {
  (void)v;
  return pt_real_vfs->xCurrentTimeInt64(pt_real_vfs, t);
}

static sqlite3_vfs pt_vfs;

/* Registers a VFS named NAME that forwards to the VFS named PARENT (NULL: the default one);
** SQLITE_OK or an error code. */
static int passthru_register_as(const char *name, const char *parent) {
  pt_real_vfs = sqlite3_vfs_find(parent);
  if (!pt_real_vfs) return SQLITE_ERROR;
  pt_vfs = *pt_real_vfs; /* inherits iVersion, mxPathname, the syscall hooks */
  pt_vfs.pNext = NULL;
  pt_vfs.zName = name;
  pt_vfs.szOsFile = (int)sizeof(struct pt_file) + pt_real_vfs->szOsFile;
  pt_vfs.xOpen = pt_open;
  pt_vfs.xDelete = pt_delete;
  pt_vfs.xAccess = pt_access;
  pt_vfs.xFullPathname = pt_full_pathname;
  pt_vfs.xDlOpen = pt_dl_open;
  pt_vfs.xDlError = pt_dl_error;
  pt_vfs.xDlSym = pt_dl_sym;
  pt_vfs.xDlClose = pt_dl_close;
  pt_vfs.xRandomness = pt_randomness;
  pt_vfs.xSleep = pt_sleep;
  pt_vfs.xCurrentTime = pt_current_time;
  pt_vfs.xGetLastError = pt_get_last_error;
  pt_vfs.xCurrentTimeInt64 = pt_current_time_int64;
  return sqlite3_vfs_register(&pt_vfs, 0);
}

/* Registers "passthru" over the default VFS (unix). */
static inline int passthru_register(void) { return passthru_register_as("passthru", NULL); }
