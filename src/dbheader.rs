//! Fields of the 100-byte SQLite database header (page 1), per the file-format documentation.
//!
//! All integers are big-endian. Pure functions on byte slices; callers pass at least the first 100
//! bytes of page 1 (shorter input yields `None`).

/// The 16-byte magic string every SQLite database file starts with.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Length of the database header at the start of page 1.
pub const HEADER_LEN: usize = 100;
/// Offset of the page size (u16, 1 means 65536).
pub const HDR_PAGE_SIZE: usize = 16;
/// Offset of the file format write version (1 rollback, 2 WAL).
pub const HDR_WRITE_VERSION: usize = 18;
/// Offset of the file format read version (1 rollback, 2 WAL).
pub const HDR_READ_VERSION: usize = 19;
/// Offset of the file change counter.
pub const HDR_CHANGE_COUNTER: usize = 24;
/// Offset of the in-header database size in pages.
pub const HDR_DB_SIZE: usize = 28;
/// Offset of the version-valid-for number (the change counter when `HDR_DB_SIZE` was written).
pub const HDR_VERSION_VALID_FOR: usize = 92;

/// Byte offset of the lock-byte page's first byte (SQLite never writes that page).
pub const LOCK_BYTE_OFFSET: u64 = 0x4000_0000;

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Page size declared by the header, if the bytes are a database header with a legal page size.
pub fn page_size(page1: &[u8]) -> Option<u32> {
    if page1.len() < HEADER_LEN || &page1[..16] != MAGIC {
        return None;
    }
    let raw = u16::from_be_bytes([page1[HDR_PAGE_SIZE], page1[HDR_PAGE_SIZE + 1]]) as u32;
    let size = if raw == 1 { 65536 } else { raw };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

/// The change counter at offset 24.
pub fn change_counter(page1: &[u8]) -> Option<u32> {
    be_u32(page1, HDR_CHANGE_COUNTER)
}

/// `pages` (a header's claim), never more than a file of `file_size` bytes holds when its size is
/// known: a header claiming more is corrupt (SQLite refuses to read it), and the backup mirrors
/// the file's bytes, not the claim.
pub fn pages_within_file(pages: u64, page_size: u32, file_size: Option<u64>) -> u64 {
    file_size.map_or(pages, |size| {
        pages.min(size.div_ceil(u64::from(page_size.max(1))))
    })
}

/// The in-header database size in pages, if SQLite would trust it: non-zero and written by the
/// same transaction as the change counter (offset 92 equals offset 24).
pub fn trusted_db_pages(page1: &[u8]) -> Option<u32> {
    if page1.len() < HEADER_LEN || &page1[..16] != MAGIC {
        return None;
    }
    let pages = be_u32(page1, HDR_DB_SIZE)?;
    let valid = be_u32(page1, HDR_VERSION_VALID_FOR)? == be_u32(page1, HDR_CHANGE_COUNTER)?;
    (valid && pages > 0).then_some(pages)
}

/// True when bytes 18/19 say the database is in WAL mode.
pub fn is_wal_format(page1: &[u8]) -> bool {
    page1.len() > HDR_READ_VERSION
        && (page1[HDR_WRITE_VERSION] == 2 || page1[HDR_READ_VERSION] == 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page: u16, counter: u32, pages: u32, valid_for: u32) -> Vec<u8> {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&page.to_be_bytes());
        h[18] = 1;
        h[19] = 1;
        h[24..28].copy_from_slice(&counter.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&valid_for.to_be_bytes());
        h
    }

    #[test]
    fn reads_fields() {
        let h = header(4096, 7, 12, 7);
        assert_eq!(page_size(&h), Some(4096));
        assert_eq!(change_counter(&h), Some(7));
        assert_eq!(trusted_db_pages(&h), Some(12));
        assert!(!is_wal_format(&h));
    }

    #[test]
    fn page_size_one_means_64k_and_garbage_is_rejected() {
        assert_eq!(page_size(&header(1, 1, 1, 1)), Some(65536));
        assert_eq!(page_size(&header(1000, 1, 1, 1)), None);
        assert_eq!(page_size(&[0u8; 50]), None);
        let mut h = header(4096, 1, 1, 1);
        h[0] = b'X';
        assert_eq!(page_size(&h), None);
    }

    #[test]
    fn stale_size_is_not_trusted() {
        assert_eq!(trusted_db_pages(&header(4096, 8, 12, 7)), None);
    }
}
