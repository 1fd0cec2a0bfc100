//! Lock-free reads of the source database for the consumer (resync, header checks), opened by
//! the consumer thread itself.
//!
//! The danger is the close: POSIX advisory locks belong to a descriptor table, and closing *any*
//! descriptor of a file in it drops all of that table's locks on the file, including the locks
//! SQLite's connections hold on the source. Two readers, chosen by the consumer's table
//! (`fdtable`):
//! - [`FileSource`], a plain descriptor, when the consumer has a table of its own: the
//!   application's locks belong to the process's table, which that close does not touch;
//! - [`UnixSource`], a private file object of the underlying unix VFS, when the consumer shares
//!   the process's table (leaving it failed): the unix VFS shares one inode record per file and
//!   defers closes while locks are held, and our reader inherits that protection. A unix VFS
//!   descriptor must never be opened from a private table: the VFS hands descriptors whose close
//!   it deferred to its next opener of the same file, in whatever table that opener uses.
//!
//! Neither reader ever locks.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use libsqlite3_sys::{
    SQLITE_IOERR_SHORT_READ, SQLITE_OK, SQLITE_OPEN_MAIN_DB, SQLITE_OPEN_READONLY, sqlite3_file,
    sqlite3_int64, sqlite3_vfs,
};

use crate::consumer::SourceReader;

/// Opens the consumer's reader of the source on the calling thread, by its table (module doc).
pub struct SourceOpener {
    root: UnixVfs,
    path: PathBuf,
}

/// The registered unix VFS: a static object SQLite never frees, whose methods any thread may
/// call.
struct UnixVfs(*mut sqlite3_vfs);

// SAFETY: see `UnixVfs`: the pointer is to a process-wide VFS object SQLite keeps registered and
// whose xOpen is thread-safe.
unsafe impl Send for UnixVfs {}

impl SourceOpener {
    /// # Safety
    /// `root` must be null or the registered unix VFS.
    pub unsafe fn new(root: *mut sqlite3_vfs, path: &Path) -> SourceOpener {
        SourceOpener {
            root: UnixVfs(root),
            path: path.to_path_buf(),
        }
    }

    /// The reader for the calling thread's descriptor table.
    pub fn open(&self) -> io::Result<Box<dyn SourceReader>> {
        if crate::fdtable::current() != crate::fdtable::SHARED {
            return Ok(Box::new(FileSource {
                file: File::open(&self.path)?,
            }));
        }
        // SAFETY: `root` is null or the registered unix VFS (`new`'s contract).
        unsafe { UnixSource::open(self.root.0, &self.path) }
    }
}

/// The source through a plain read-only descriptor (only in a private descriptor table).
pub struct FileSource {
    file: File,
}

impl SourceReader for FileSource {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // Like the unix VFS: the part past the end of the file reads as zeros.
        crate::backup::apply::read_padded(&self.file, buf, offset)
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

/// A read-only unix file on the source database.
pub struct UnixSource {
    /// Backing memory of the `sqlite3_file` (szOsFile bytes, 8-aligned).
    mem: Vec<u64>,
    /// The filename as SQLite expects it: 4 NULs before (so SQLite's backward scan for a
    /// database name stops inside our buffer), the path, then NULs ending the empty URI list.
    _name: Vec<u8>,
    open: bool,
}

// SAFETY: the file object is used by one thread at a time (the consumer owns it; `&mut self` on
// every method), and the unix VFS's shared inode bookkeeping is protected by its own mutex.
unsafe impl Send for UnixSource {}

impl UnixSource {
    /// Opens `path` read-only through `root` (the unix VFS).
    ///
    /// # Safety
    /// `root` must be null or the registered unix VFS.
    pub unsafe fn open(root: *mut sqlite3_vfs, path: &Path) -> io::Result<Box<dyn SourceReader>> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: `root` is the registered unix VFS.
        let r = unsafe { root.as_ref() }.ok_or_else(|| io::Error::other("no unix VFS"))?;
        let open = r
            .xOpen
            .ok_or_else(|| io::Error::other("unix VFS lacks xOpen"))?;
        let words = (r.szOsFile.max(8) as usize).div_ceil(8);
        let mut mem = vec![0u64; words];
        let mut name = vec![0u8; 4];
        name.extend_from_slice(path.as_os_str().as_bytes());
        name.extend_from_slice(&[0, 0, 0, 0]);
        let file = mem.as_mut_ptr() as *mut sqlite3_file;
        let mut out: c_int = 0;
        // SAFETY: `file` has szOsFile zeroed bytes; the name (after the 4-byte prefix) is
        // NUL-terminated and lives as long as the file object (kept in `_name`).
        let rc = unsafe {
            open(
                root,
                name.as_ptr().add(4) as *const std::ffi::c_char,
                file,
                SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_READONLY,
                &mut out,
            )
        };
        // SAFETY: reading the pMethods field SQLite's xOpen set (or left null).
        let has_methods = unsafe { !(*file).pMethods.is_null() };
        let src = UnixSource {
            mem,
            _name: name,
            open: has_methods,
        };
        if rc != SQLITE_OK {
            return Err(io::Error::other(format!(
                "opening the source for reading failed (code {rc})"
            )));
        }
        Ok(Box::new(src))
    }

    fn file(&mut self) -> *mut sqlite3_file {
        self.mem.as_mut_ptr() as *mut sqlite3_file
    }
}

impl SourceReader for UnixSource {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let f = self.file();
        // SAFETY: the file is open (constructor succeeded), so pMethods is valid.
        let read = unsafe { (*(*f).pMethods).xRead }.ok_or_else(|| io::Error::other("no xRead"))?;
        // SAFETY: `buf` is writable for its length; offset fits i64 for any real database.
        let rc = unsafe {
            read(
                f,
                buf.as_mut_ptr() as *mut c_void,
                buf.len() as c_int,
                offset as i64,
            )
        };
        match rc {
            SQLITE_OK => Ok(buf.len()),
            // unix zero-fills the rest of a short read.
            SQLITE_IOERR_SHORT_READ => Ok(0),
            rc => Err(io::Error::other(format!(
                "reading the source failed (code {rc})"
            ))),
        }
    }

    fn size(&mut self) -> io::Result<u64> {
        let f = self.file();
        // SAFETY: the file is open.
        let size_fn = unsafe { (*(*f).pMethods).xFileSize }
            .ok_or_else(|| io::Error::other("no xFileSize"))?;
        let mut size: sqlite3_int64 = 0;
        // SAFETY: valid out pointer.
        let rc = unsafe { size_fn(f, &mut size) };
        if rc != SQLITE_OK {
            return Err(io::Error::other(format!(
                "sizing the source failed (code {rc})"
            )));
        }
        Ok(size.max(0) as u64)
    }
}

impl Drop for UnixSource {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let f = self.file();
        // SAFETY: the file is open; xClose releases it (deferring the fd close if the process
        // still holds locks on the inode).
        if let Some(close) = unsafe { (*(*f).pMethods).xClose } {
            // SAFETY: as above; called exactly once.
            unsafe { close(f) };
        }
        self.open = false;
    }
}
