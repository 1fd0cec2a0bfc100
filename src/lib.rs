//! spoolvfs: a SQLite loadable extension whose VFS `spool` keeps a live, always-consistent backup
//! copy of a database, without making writers wait.
//!
//! Data flow: the VFS (`ffi::io`) tees every page written to the main database file or WAL into
//! `capture`, which appends it to a spool segment (`spool::writer`) and seals each transaction at
//! its commit point. A consumer thread per database (`consumer`) reads sealed transactions
//! (`spool::reader`), applies them in batches to the backup with SQLite's own rollback-journal
//! protocol (`backup::apply`), and repairs any loss with a non-blocking resync
//! (`consumer::resync`). See README.md for usage and docs/DESIGN.md for the invariants.

pub mod backup;
pub mod capture;
pub mod config;
pub mod consumer;
pub mod dbheader;
pub mod dbstate;
pub mod entry;
pub mod faults;
pub mod fdtable;
pub mod ffi;
pub mod filestamp;
pub mod spool;
pub mod status;
pub mod util;
pub mod wal;
pub mod walend;
