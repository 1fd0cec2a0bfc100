/*
** passthru_ext: a loadable extension that registers the `passthru` shim (c/passthru.c) as the VFS
** "passthru-over-spool", forwarding every call to `spool`. Used by tests/e2e/test_stacked_vfs.py:
** an application may layer its own VFS (tracing, checksums, SQLite's test VFS) above spool, and
** then SQLite's pager hands spool file objects that are not the pager's own.
**
** The SQL function passthru_refuse_foreign_fcntl(ON), registered on the loading connection, makes
** the shim answer SQLITE_NOTFOUND to file-control opcodes that are not SQLite's own (spoolvfs's
** included) instead of forwarding them, process-wide, from then on.
**
** Load spoolvfs first (the `spool` VFS must exist). Not part of the product.
*/
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include "passthru.c"

static void refuse_foreign_fcntl(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  pt_refuse_foreign_fcntl = sqlite3_value_int(argv[0]) != 0;
  sqlite3_result_int(ctx, pt_refuse_foreign_fcntl);
}

int sqlite3_passthruext_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  if (passthru_register_as("passthru-over-spool", "spool") != SQLITE_OK) {
    *err = sqlite3_mprintf("passthru_ext: load spoolvfs first (no VFS named spool)");
    return SQLITE_ERROR;
  }
  int rc = sqlite3_create_function(db, "passthru_refuse_foreign_fcntl", 1, SQLITE_UTF8, NULL,
                                   refuse_foreign_fcntl, NULL, NULL);
  return rc == SQLITE_OK ? SQLITE_OK_LOAD_PERMANENTLY : rc;
}
