/*
** spoolvfs.h -- embedding the spool VFS in a C application.
**
** spoolvfs is a SQLite VFS shim named "spool". A database opened through it behaves exactly as
** through the default VFS (same results, error codes and file bytes), while a background thread
** of the same process keeps a BACKUP file that is, whenever an ordinary SQLite reader can see it,
** a valid database equal to the source as of one committed transaction. Changes travel from the
** writer to the backup through a SPOOL on disk; the writer never waits for the backup.
**
** The library is a Rust cdylib, libspoolvfs.so. It links no SQLite of its own: every call goes
** through the host's sqlite3_api_routines, so it works with the SQLite the application already
** uses (3.40 or newer has been tested).
**
** ------------------------------------------------------------------------------------------------
** LOADING AT RUN TIME
**
**     sqlite3 *boot;
**     char *err = NULL;
**     sqlite3_open(":memory:", &boot);
**     sqlite3_enable_load_extension(boot, 1);
**     if (sqlite3_load_extension(boot, "libspoolvfs.so", SPOOLVFS_ENTRY_POINT, &err) != SQLITE_OK)
**       fprintf(stderr, "%s\n", err);
**     sqlite3_close(boot);     // fine: the extension stays loaded for the process
**
** From the sqlite3 shell: `.load ./libspoolvfs` (the entry point name is derived from the file
** name), then `.open 'file:app.db?vfs=spool&backup=app.db-backup'`.
**
** ------------------------------------------------------------------------------------------------
** REGISTERING WITHOUT sqlite3_load_extension()
**
** When the program links libspoolvfs directly (-lspoolvfs, or a build that disables run-time
** extension loading), register the entry point with sqlite3_auto_extension() before opening
** databases. SQLite then calls it for every new connection, passing its own API table; the first
** call registers the VFS, and the first connection must be opened before any vfs=spool URI:
**
**     sqlite3_auto_extension((void (*)(void))sqlite3_spoolvfs_init);
**     sqlite3 *boot;
**     sqlite3_open(":memory:", &boot);   // runs the entry point: "spool" now exists
**     sqlite3_close(boot);
**
** Do not call sqlite3_spoolvfs_init() directly with a NULL API table: the library calls SQLite
** only through the table it is given.
**
** ------------------------------------------------------------------------------------------------
** OPENING A DATABASE THROUGH THE VFS
**
** Use a URI filename (SQLITE_OPEN_URI, or SQLITE_CONFIG_URI) with vfs=spool:
**
**     file:/data/app.db?vfs=spool&backup=/backups/app.db&spool=/data/app.db-spool
**
**   backup=PATH   the backup database (default: "<db>-backup"). A plain SQLite database in
**                 rollback-journal mode; read it with any SQLite, through any VFS, at any time.
**   spool=PATH    where pending changes are kept on disk (default: "<db>-spool").
**
** The VFS is registered but never made the default: only URIs with vfs=spool (or an explicit
** zVfs="spool" argument to sqlite3_open_v2) use it. Files other than the main database, its
** rollback journal and its WAL (temp databases, statement journals, super-journals) are passed
** through untouched and get no backup. ATTACHed databases opened with vfs=spool each get their
** own backup; backups of databases committed together are each consistent, not mutually atomic.
**
** Journal modes DELETE, TRUNCATE, PERSIST and WAL are supported, in normal and EXCLUSIVE
** locking mode. For rollback-journal sources in normal locking mode the synced backup is
** byte-identical to the source. For WAL sources and EXCLUSIVE locking the page-1 header bytes
** 18-19 (the backup always says rollback mode), 24-27 and 92-95 (change counter) may differ.
**
** The last connection to a database to close in a process drains pending changes into the
** backup before returning (bounded wait).
**
** ------------------------------------------------------------------------------------------------
** SQL FUNCTIONS
**
** Registered on the loading connection and, by auto-extension, on every connection opened later.
**
**   spool_status()          JSON text: {"db", "backup", "spool", "journal_mode",
**                           "captured", "applied" (transaction counts), "pending_bytes",
**                           "lag_ms", "last_error" (null or text), "resyncs", ...}
**   spool_sync([timeout_ms]) 1 once every transaction committed before the call is in the
**                           backup, 0 if timeout_ms passed first.
**   spool_resync()          compares the backup with the source page by page, rewrites the
**                           pages that differ, and returns 1 when done.
**   spool_version()         the library version, as text.
*/
#ifndef SPOOLVFS_H
#define SPOOLVFS_H

#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Name of the entry point, for sqlite3_load_extension()'s third argument. */
#define SPOOLVFS_ENTRY_POINT "sqlite3_spoolvfs_init"

/* Name under which the VFS is registered, for URIs (vfs=spool) and sqlite3_vfs_find(). */
#define SPOOLVFS_VFS_NAME "spool"

/*
** sqlite3_spoolvfs_init -- the extension entry point.
**
** Registers the "spool" VFS (not as the default), registers the SQL functions on `db` and, through
** sqlite3_auto_extension(), on every connection opened afterwards. Idempotent: loading twice, or
** from several connections, registers everything once.
**
**   db      the connection loading the extension
**   pzErrMsg on failure, receives an error message allocated with sqlite3_malloc()
**   pApi    the host's API table, as SQLite passes it to loadable extensions
**
** Returns SQLITE_OK_LOAD_PERMANENTLY on success: the library must stay loaded for the life of the
** process, because the registered VFS points into it. Any other value is an error code.
*/
int sqlite3_spoolvfs_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SPOOLVFS_H */
