/*
** spool_default_ext: a loadable extension that makes the already registered `spool` VFS the
** default one, so that SQLite's own test suite (testfixture, scripts/sqlite_testsuite.sh) opens
** every database through spoolvfs. Test harness only: the product never registers as default.
*/
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1
int sqlite3_spooldefault_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  (void)db;
  sqlite3_vfs *v = sqlite3_vfs_find("spool");
  if (!v) { *err = sqlite3_mprintf("spool VFS not registered"); return SQLITE_ERROR; }
  int rc = sqlite3_vfs_register(v, 1);
  return rc == SQLITE_OK ? SQLITE_OK_LOAD_PERMANENTLY : rc;
}
