# Runs one file of SQLite's test suite with `spool` as the default VFS:
#   testfixture scripts/sqlite_testsuite.tcl TESTFILE [tester.tcl options]
# Environment: SPOOLVFS_LIB (the extension), SPOOL_DEFAULT_LIB (c/spool_default_ext.c built).
# tester.tcl re-initialises SQLite (sqlite3_shutdown, sqlite3_initialize), and initialisation
# makes `unix` the default VFS again, so spool is made the default after every initialisation.
proc spool_make_default {} {
  sqlite3 spool_boot :memory:
  spool_boot enable_load_extension 1
  spool_boot eval { SELECT load_extension($::env(SPOOLVFS_LIB), 'sqlite3_spoolvfs_init') }
  spool_boot eval { SELECT load_extension($::env(SPOOL_DEFAULT_LIB), 'sqlite3_spooldefault_init') }
  spool_boot close
}
rename sqlite3_initialize spool_orig_sqlite3_initialize
proc sqlite3_initialize {args} {
  set rc [spool_orig_sqlite3_initialize {*}$args]
  spool_make_default
  return $rc
}
spool_make_default
set spool_test [lindex $argv 0]
set argv [lrange $argv 1 end]
set argv0 $spool_test
source $spool_test
