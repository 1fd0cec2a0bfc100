/*
** passthru_ext: a loadable extension that registers the `passthru` shim (c/passthru.c) as the VFS
** "passthru-over-spool", forwarding every call to `spool`. Used by tests/e2e/test_stacked_vfs.py:
** an application may layer its own VFS (tracing, checksums, SQLite's test VFS) above spool, and
** then SQLite's pager hands spool file objects that are not the pager's own.
**
** Load spoolvfs first (the `spool` VFS must exist). Not part of the product.
*/
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include "passthru.c"

int sqlite3_passthruext_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  (void)db;
  if (passthru_register_as("passthru-over-spool", "spool") != SQLITE_OK) {
    *err = sqlite3_mprintf("passthru_ext: load spoolvfs first (no VFS named spool)");
    return SQLITE_ERROR;
  }
  return SQLITE_OK_LOAD_PERMANENTLY;
}
