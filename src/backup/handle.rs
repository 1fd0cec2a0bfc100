//! This process's descriptors on backup files: opened once, shared, and not closed while the file
//! exists.
//!
//! Why: POSIX advisory locks belong to the process, and the kernel drops *all* of them on a file
//! when *any* descriptor of the process on that file is closed. An application that reads the
//! backup in its own process (a reporting connection, say) holds SQLite's POSIX SHARED lock on it
//! during a read transaction. If the consumer opened and closed the backup (to fingerprint it, or
//! once per apply), that lock would silently vanish, the next apply's EXCLUSIVE would be granted
//! while the reader is inside its transaction, and the reader could see pages of two states.
//! SQLite's unix VFS avoids the same trap for its own files by deferring closes, but we do not
//! share its bookkeeping (and the host may even run two SQLite libraries). Found by an e2e test
//! whose in-process reader failed to hold an apply back.
//!
//! Descriptors belong to a descriptor table (`fdtable`): the application's threads share the
//! process's, a consumer thread has its own. The process's table keeps its descriptors in one
//! registry for every thread of it; a consumer's table keeps its own in a registry of its thread,
//! closed with it. (A close in a consumer's table could not drop the application's locks anyway,
//! since POSIX locks belong to the table that took them; the registry still spares it reopening
//! the backup for every fingerprint and apply.)
//!
//! Invariants:
//! - Every open of a backup by the consumer goes through [`open`]; a descriptor is closed only
//!   once its file has no name left (link count 0): nobody writes that inode any more, so the
//!   host locks its close drops protect nothing.
//! - A descriptor is handed out only to threads of the table that opened it.
//! - Our own locks are OFD locks (`lock`), which belong to the shared open file description, so
//!   sharing it changes nothing for them: one active consumer per database applies at a time.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Open backup files by (device, inode), and descriptors that lost a race to be the shared one
/// (kept, since closing them would drop the process's locks on that file too).
#[derive(Default)]
struct Open {
    by_inode: HashMap<(u64, u64), Arc<File>>,
    spares: Vec<File>,
}

/// The registry of the process's shared table.
static OPEN: Mutex<Option<Open>> = Mutex::new(None);

thread_local! {
    /// The registry of a thread with a private table (a consumer's); its descriptors are closed
    /// with the thread, in its table.
    static OWN_TABLE_OPEN: std::cell::RefCell<Open> = std::cell::RefCell::new(Open::default());
}

/// The backup file now at `path`, opened for reading and writing; created (mode 0644) when
/// `create` is set, else `Ok(None)` if there is none. The descriptor is valid in the calling
/// thread's descriptor table.
pub fn open(path: &Path, create: bool) -> io::Result<Option<Arc<File>>> {
    if crate::fdtable::current() != crate::fdtable::SHARED {
        return OWN_TABLE_OPEN.with(|open| open_in(&mut open.borrow_mut(), path, create));
    }
    let mut guard = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    open_in(guard.get_or_insert_with(Open::default), path, create)
}

fn open_in(open: &mut Open, path: &Path, create: bool) -> io::Result<Option<Arc<File>>> {
    match std::fs::metadata(path) {
        Ok(m) => {
            if let Some(f) = open.by_inode.get(&(m.dev(), m.ino())) {
                return Ok(Some(f.clone()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !create {
                return Ok(None);
            }
        }
        Err(e) => return Err(e),
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = file.metadata()?;
    let key = (m.dev(), m.ino());
    // The path may have been replaced between the stat and the open: key by what was opened.
    if let Some(f) = open.by_inode.get(&key) {
        let shared = f.clone();
        open.spares.push(file);
        return Ok(Some(shared));
    }
    forget_unlinked(open);
    let file = Arc::new(file);
    open.by_inode.insert(key, file.clone());
    Ok(Some(file))
}

/// Closes the descriptors of backup files that no longer have a name (deleted or replaced).
fn forget_unlinked(open: &mut Open) {
    open.by_inode
        .retain(|_, f| f.metadata().map(|m| m.nlink() > 0).unwrap_or(true));
    open.spares
        .retain(|f| f.metadata().map(|m| m.nlink() > 0).unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        crate::util::fresh_test_dir("handle", name)
    }

    #[test]
    fn one_description_per_file_and_none_without_create() {
        let d = dir("share");
        let p = d.join("b.db");
        assert!(open(&p, false).unwrap().is_none());
        let a = open(&p, true).unwrap().unwrap();
        let b = open(&p, false).unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same file must share one descriptor"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_replaced_file_gets_its_own_descriptor_and_the_old_one_is_closed() {
        let d = dir("replace");
        let p = d.join("b.db");
        let old = open(&p, true).unwrap().unwrap();
        std::fs::remove_file(&p).unwrap();
        let new = open(&p, true).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        let guard = OPEN.lock().unwrap();
        let held = guard.as_ref().unwrap().by_inode.values();
        assert!(
            held.clone().all(|f| !Arc::ptr_eq(f, &old)),
            "the unlinked file's descriptor is no longer kept"
        );
        drop(guard);
        let _ = std::fs::remove_dir_all(&d);
    }
}
