//! The backup side: everything that touches the backup copy, with `std::fs` only (no SQLite).
//!
//! Invariant: whenever a reader holding ordinary SQLite locks can observe the backup file, it is a
//! valid database in one committed state. We keep it by following SQLite's own rollback-journal
//! protocol on the backup (see `apply`): pre-images go to `<backup>-journal` first, the journal is
//! made hot and synced, the new images are written under an EXCLUSIVE lock, then the journal is
//! deleted. A crash at any point leaves either the old state or a hot journal that SQLite (or our
//! `recover`) rolls back.

pub mod apply;
pub mod handle;
pub mod journal;
pub mod lock;
pub mod pagebits;
pub mod writeset;
