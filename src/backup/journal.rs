//! SQLite's rollback-journal format: a writer for our own journals and a reader that rolls back
//! a hot journal exactly as SQLite's pager would, so either of us can finish a crashed apply.
//!
//! Layout (all integers big-endian), as documented by SQLite's pager.c:
//! - header, padded with zeros to the sector size (we always write 512): 8-byte magic, nRec,
//!   checksum nonce, original database size in pages, sector size, page size;
//! - nRec records of `u32 pgno`, the page's original content, `u32 checksum`, where the checksum
//!   is the nonce plus every 200th byte of the page counted down from `page_size - 200`.
//!
//! Invariant of the writer: nRec never counts a record before that record is durable; `finish`
//! syncs the records, then writes the magic and nRec, then syncs again. So a reader sees either
//! a non-hot journal (ignored, database untouched) or one whose every counted record is whole.
//! A writer may append and `finish` again (a backup span, `apply`): records past the durable
//! nRec are not played back until the next `finish` counts them, and they only hold pre-images
//! of pages the database has not changed yet.
//!
//! The journal file is persistent, like SQLite's `journal_mode=PERSIST`: it is reused by every
//! apply and finalized by zeroing its header (`finalize`), which a reader treats as "not hot".
//! Reusing it avoids a create, an unlink and two directory fsyncs per batch, metadata churn that
//! slows down every other fsync on the filesystem (the application's too). Stale bytes of an older,
//! longer journal may follow our records, so `finish` also zeroes the sector where a following
//! header would be looked for: playback stops there instead of replaying stale records.
//!
//! Invariant of the reader: it only ever writes pre-images recorded with a valid checksum, stops
//! at the first damaged record (a torn write past it cannot be trusted), and never writes the
//! lock-byte page.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::lock::PENDING_BYTE;

pub const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
/// Sector size we record in our headers; it is also the header's padded length.
pub const SECTOR_SIZE: u32 = 512;
/// Bytes of header fields before the padding.
const HEADER_FIELDS: usize = 28;

/// `<backup>-journal`, the name SQLite looks for.
pub fn journal_path(backup: &Path) -> PathBuf {
    let mut s = backup.as_os_str().to_owned();
    s.push("-journal");
    PathBuf::from(s)
}

/// Page number (1-based) of the page holding the lock bytes for `page_size`.
pub fn lock_byte_pgno(page_size: u32) -> u64 {
    PENDING_BYTE / u64::from(page_size.max(1)) + 1
}

/// A valid SQLite page size: a power of two from 512 to 65536.
pub fn valid_page_size(ps: u32) -> bool {
    (512..=65536).contains(&ps) && ps.is_power_of_two()
}

/// SQLite's journal record checksum.
pub fn checksum(nonce: u32, page: &[u8]) -> u32 {
    let mut sum = nonce;
    let mut i = page.len() as i64 - 200;
    while i > 0 {
        // `i` is in 1..len here, so the index exists; `get` keeps it panic-free regardless.
        if let Some(b) = page.get(i as usize) {
            sum = sum.wrapping_add(u32::from(*b));
        }
        i -= 200;
    }
    sum
}

/// A random-enough nonce: it only has to make stale records from an older journal with the same
/// layout fail their checksums.
fn nonce() -> u32 {
    let mut b = [0u8; 4];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u32::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (t >> 32) ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9)) as u32
}

/// Fsyncs the directory holding `path`, so a create or delete in it is durable.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes a rollback journal for one transaction on the backup.
pub struct JournalWriter {
    out: BufWriter<File>,
    page_size: u32,
    nonce: u32,
    n_rec: u32,
    sync: bool,
    /// The file did not exist before: its directory entry must be made durable too.
    created: bool,
    path: PathBuf,
}

/// Journals larger than this are cut back after a batch (like SQLite's journal_size_limit).
pub const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;

/// True if the journal at `path` exists and looks hot (its first byte is not zero).
pub fn is_hot(path: &Path) -> io::Result<bool> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut first = [0u8; 1];
    match f.read_at(&mut first, 0)? {
        0 => Ok(false),
        _ => Ok(first[0] != 0),
    }
}

/// Turns the journal at `path` back into a non-hot one by zeroing its header fields (the commit
/// point of an apply), syncs that, and trims an oversized journal. A missing journal is fine.
pub fn finalize(path: &Path, sync: bool) -> io::Result<()> {
    let f = match File::options().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    f.write_all_at(&[0u8; HEADER_FIELDS], 0)?;
    if sync {
        f.sync_data()?;
    }
    if f.metadata()?.len() > JOURNAL_SIZE_LIMIT {
        // The header is already zero: trimming needs no ordering with anything.
        f.set_len(JOURNAL_SIZE_LIMIT)?;
    }
    Ok(())
}

impl JournalWriter {
    /// Creates (or truncates) the journal at `path` and writes its header with the magic and
    /// nRec zeroed, i.e. not hot yet. `sync` = fsync in `finish` (always wanted in production).
    pub fn create(path: &Path, db_orig_pages: u32, page_size: u32, sync: bool) -> io::Result<Self> {
        if !valid_page_size(page_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid journal page size",
            ));
        }
        let created = !path.exists();
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)?;
        let nonce = nonce();
        let mut hdr = [0u8; SECTOR_SIZE as usize];
        // Bytes 0..12 (magic, nRec) stay zero until `finish`.
        hdr[12..16].copy_from_slice(&nonce.to_be_bytes());
        hdr[16..20].copy_from_slice(&db_orig_pages.to_be_bytes());
        hdr[20..24].copy_from_slice(&SECTOR_SIZE.to_be_bytes());
        hdr[24..28].copy_from_slice(&page_size.to_be_bytes());
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&hdr)?;
        Ok(JournalWriter {
            out,
            page_size,
            nonce,
            n_rec: 0,
            sync,
            created,
            path: path.to_path_buf(),
        })
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Number of records appended so far.
    pub fn records(&self) -> u32 {
        self.n_rec
    }

    /// Length of the journal's header and records so far.
    pub fn bytes(&self) -> u64 {
        u64::from(SECTOR_SIZE) + u64::from(self.n_rec) * (u64::from(self.page_size) + 8)
    }

    /// Appends the original content of page `pgno` (exactly `page_size` bytes).
    pub fn append(&mut self, pgno: u32, data: &[u8]) -> io::Result<()> {
        if data.len() != self.page_size as usize || pgno == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal record has the wrong size or page number",
            ));
        }
        let n = self.n_rec.checked_add(1).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "too many journal records")
        })?;
        self.out.write_all(&pgno.to_be_bytes())?;
        self.out.write_all(data)?;
        self.out
            .write_all(&checksum(self.nonce, data).to_be_bytes())?;
        self.n_rec = n;
        Ok(())
    }

    /// Hands buffered records to the OS (no sync). Used to model a crash after the records.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Makes the journal hot: zero the sector where a next header would be looked for, sync the
    /// records, write magic + nRec, sync again (and the directory, for a new file).
    pub fn finish(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let f = self.out.get_ref();
        let end = self.bytes();
        let next_header = end.div_ceil(u64::from(SECTOR_SIZE)) * u64::from(SECTOR_SIZE);
        f.write_all_at(&[0u8; SECTOR_SIZE as usize], next_header)?;
        // fdatasync, not fsync: the records and header need their data (and the file's size)
        // durable, not its timestamps. fsync would also commit the inode's new mtime each time,
        // one extra filesystem-journal commit and device flush per call that the application's
        // own fsyncs on the same device queue behind.
        if self.sync {
            f.sync_data()?;
            if self.created {
                sync_parent_dir(&self.path)?;
                self.created = false;
            }
        }
        let mut head = [0u8; 12];
        head[..8].copy_from_slice(&JOURNAL_MAGIC);
        head[8..].copy_from_slice(&self.n_rec.to_be_bytes());
        f.write_all_at(&head, 0)?;
        if self.sync {
            f.sync_data()?;
        }
        Ok(())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

/// Removes the journal and makes the removal durable.
fn delete_journal(journal_path: &Path) -> io::Result<()> {
    match std::fs::remove_file(journal_path) {
        Ok(()) => sync_parent_dir(journal_path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a whole header's fields at `off`, or None if the file ends first.
fn read_fields(j: &File, off: u64, size: u64) -> io::Result<Option<[u8; HEADER_FIELDS]>> {
    if off.saturating_add(HEADER_FIELDS as u64) > size {
        return Ok(None);
    }
    let mut h = [0u8; HEADER_FIELDS];
    j.read_exact_at(&mut h, off)?;
    Ok(Some(h))
}

/// Rolls back the hot journal at `journal_path` onto `db`, if there is one.
///
/// The caller must hold EXCLUSIVE on `db` (nobody else may read or write it meanwhile). Returns
/// `Ok(true)` if the journal was hot and was played back (the database then has its
/// pre-transaction size and content, synced); `Ok(false)` if there was no journal, or one that
/// was not hot (first byte zero, bad magic, invalid header), which is simply deleted.
/// Super-journal (multi-database) pointers are not interpreted: we never write them.
pub fn rollback_hot_journal(db: &File, journal_path: &Path) -> io::Result<bool> {
    let j = match File::open(journal_path) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let size = j.metadata()?.len();
    let Some(h) = read_fields(&j, 0, size)? else {
        delete_journal(journal_path)?;
        return Ok(false);
    };
    let sector = be32(&h, 20);
    let page_size = be32(&h, 24);
    // Same sanity checks as SQLite; failing them means the header never became durable.
    let valid = h[..8] == JOURNAL_MAGIC
        && valid_page_size(page_size)
        && (32..=65536).contains(&sector)
        && sector.is_power_of_two()
        && u64::from(sector) <= size;
    if !valid {
        drop(j);
        delete_journal(journal_path)?;
        return Ok(false);
    }
    let orig_pages = u64::from(be32(&h, 16));
    let ps = u64::from(page_size);
    let rec_size = ps + 8;
    let lock_pgno = lock_byte_pgno(page_size);

    // Back to the original size first (as SQLite does): pages past it must go, and a file that
    // is somehow shorter is zero-extended so every journaled page has a home.
    db.set_len(orig_pages.saturating_mul(ps))?;

    let mut rec = vec![0u8; rec_size as usize];
    let mut hdr_off = 0u64;
    let mut fields = h;
    'segments: loop {
        let mut n_rec = be32(&fields, 8);
        let nonce = be32(&fields, 12);
        let mut off = hdr_off + u64::from(sector);
        if n_rec == u32::MAX {
            // Written without syncs: the records run to the end of the file.
            n_rec = u32::try_from((size.saturating_sub(off)) / rec_size).unwrap_or(u32::MAX);
        }
        for _ in 0..n_rec {
            if off + rec_size > size {
                break 'segments; // torn tail
            }
            j.read_exact_at(&mut rec, off)?;
            off += rec_size;
            let pgno = u64::from(be32(&rec, 0));
            let data = &rec[4..4 + ps as usize];
            if pgno == 0 || pgno == lock_pgno {
                break 'segments; // garbage, as SQLite judges it
            }
            if be32(&rec, 4 + ps as usize) != checksum(nonce, data) {
                break 'segments;
            }
            if pgno > orig_pages {
                continue; // page did not exist before the transaction
            }
            db.write_all_at(data, (pgno - 1) * ps)?;
        }
        // A further segment starts at the next sector boundary, if its magic is there.
        hdr_off = off.div_ceil(u64::from(sector)) * u64::from(sector);
        if hdr_off + u64::from(sector) > size {
            break;
        }
        match read_fields(&j, hdr_off, size)? {
            Some(f) if f[..8] == JOURNAL_MAGIC => fields = f,
            _ => break,
        }
    }
    db.sync_all()?;
    drop(j);
    delete_journal(journal_path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::util::fresh_test_dir("jrnl", name)
    }

    fn rw(p: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    }

    #[test]
    fn checksum_matches_definition() {
        let mut page = vec![0u8; 1024];
        page[824] = 1;
        page[624] = 2;
        page[424] = 3;
        page[224] = 4;
        page[24] = 5;
        page[0] = 100; // i never reaches 0
        page[1023] = 100; // nor the last byte
        assert_eq!(checksum(10, &page), 10 + 15);
        assert_eq!(checksum(u32::MAX, &page), 14);
    }

    #[test]
    fn journal_path_appends_suffix() {
        assert_eq!(
            journal_path(Path::new("/a/b.db")),
            PathBuf::from("/a/b.db-journal")
        );
    }

    #[test]
    fn write_then_roll_back() {
        let d = tmp("roundtrip");
        let db = d.join("db");
        let jp = journal_path(&db);
        let ps = 512u32;
        let orig: Vec<u8> = (0..4 * ps).map(|i| (i % 251) as u8).collect();
        std::fs::write(&db, &orig).unwrap();

        let mut w = JournalWriter::create(&jp, 4, ps, true).unwrap();
        w.append(2, &orig[512..1024]).unwrap();
        w.append(4, &orig[1536..2048]).unwrap();
        w.flush().unwrap();
        let raw = std::fs::read(&jp).unwrap();
        assert_eq!(raw.len(), 512 + 2 * (512 + 8));
        assert_eq!(&raw[..12], &[0u8; 12], "not hot before finish");
        assert_eq!(be32(&raw, 16), 4);
        assert_eq!(be32(&raw, 20), 512);
        assert_eq!(be32(&raw, 24), 512);
        assert_eq!(be32(&raw, 512), 2);
        w.finish().unwrap();
        let raw = std::fs::read(&jp).unwrap();
        assert_eq!(&raw[..8], &JOURNAL_MAGIC);
        assert_eq!(be32(&raw, 8), 2);

        // Clobber pages 2 and 4 and grow the file: rollback restores both and truncates.
        let f = rw(&db);
        f.write_all_at(&[0xEE; 512], 512).unwrap();
        f.write_all_at(&[0xEE; 512 * 3], 1536).unwrap();
        assert!(rollback_hot_journal(&f, &jp).unwrap());
        assert_eq!(std::fs::read(&db).unwrap(), orig);
        assert!(!jp.exists());
        assert!(!rollback_hot_journal(&f, &jp).unwrap(), "no journal");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn not_hot_journal_is_deleted_untouched() {
        let d = tmp("cold");
        let db = d.join("db");
        let jp = journal_path(&db);
        std::fs::write(&db, [7u8; 1024]).unwrap();
        let mut w = JournalWriter::create(&jp, 1, 512, false).unwrap();
        w.append(1, &[0u8; 512]).unwrap();
        w.flush().unwrap();
        drop(w);
        let f = rw(&db);
        assert!(!rollback_hot_journal(&f, &jp).unwrap());
        assert!(!jp.exists());
        assert_eq!(std::fs::read(&db).unwrap(), vec![7u8; 1024]);
        // Garbage header: deleted too.
        std::fs::write(&jp, b"\x01garbage").unwrap();
        assert!(!rollback_hot_journal(&f, &jp).unwrap());
        assert!(!jp.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stops_at_bad_checksum() {
        let d = tmp("cksum");
        let db = d.join("db");
        let jp = journal_path(&db);
        std::fs::write(&db, [9u8; 2048]).unwrap();
        let mut w = JournalWriter::create(&jp, 4, 512, false).unwrap();
        w.append(1, &[1u8; 512]).unwrap();
        w.append(2, &[2u8; 512]).unwrap();
        w.append(3, &[3u8; 512]).unwrap();
        w.finish().unwrap();
        drop(w);
        // Corrupt a checksummed byte of record 2 (index 312 of the page).
        let jf = rw(&jp);
        let at = 512 + (512 + 8) + 4 + 312;
        jf.write_all_at(&[0xAA], at as u64).unwrap();
        drop(jf);
        let f = rw(&db);
        assert!(rollback_hot_journal(&f, &jp).unwrap());
        let got = std::fs::read(&db).unwrap();
        assert_eq!(&got[..512], &[1u8; 512]);
        assert_eq!(
            &got[512..],
            &[9u8; 1536],
            "records from the bad one on are ignored"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sqlite_cli_rolls_back_our_journal() {
        use std::process::Command;
        let d = tmp("cli");
        let db = d.join("db");
        let run = |sql: &str| {
            let out = Command::new("sqlite3")
                .arg(&db)
                .arg(sql)
                .output()
                .expect("the sqlite3 CLI must be installed");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        run("PRAGMA page_size=1024; CREATE TABLE t(x); INSERT INTO t VALUES(1),(2);");
        let orig = std::fs::read(&db).unwrap();
        let pages = (orig.len() / 1024) as u32;
        let jp = journal_path(&db);
        let mut w = JournalWriter::create(&jp, pages, 1024, true).unwrap();
        for p in 0..pages {
            let s = p as usize * 1024;
            w.append(p + 1, &orig[s..s + 1024]).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        // Scribble over every page but the header and add pages, as a crashed apply might.
        let f = rw(&db);
        for p in 0..pages as u64 + 3 {
            f.write_all_at(&[0x5A; 1000], p * 1024 + 24).unwrap();
        }
        drop(f);
        assert_eq!(
            run("PRAGMA integrity_check; SELECT count(*) FROM t;"),
            "ok\n2\n"
        );
        assert!(!jp.exists());
        assert_eq!(std::fs::read(&db).unwrap(), orig);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
