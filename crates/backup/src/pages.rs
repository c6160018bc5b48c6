//! The page stream a backup carries: the database's pages as SQLite sees
//! them, decrypted, read through the `sqlite_dbpage` virtual table inside
//! one read transaction, and written back page for page on restore, under
//! the restored till's own key. A page copy needs no b-tree rebuild (what
//! `sqlcipher_export` does), and plaintext pages compress, where the
//! encrypted file does not.
//!
//! Layout of the decrypted, decompressed stream:
//! `TSP1`, the page size (u32, little-endian), the page count (u64, LE),
//! then every page in order, each with its reserved bytes zeroed.
//!
//! The functions here are pure: they shape and check bytes; the SQLite
//! side is in `lib.rs`.

/// The stream's tag.
pub const TAG: &[u8; 4] = b"TSP1";
/// Header length: tag, page size, page count.
pub const HEADER_LEN: usize = 4 + 4 + 8;
/// Page sizes SQLite allows.
pub const PAGE_LEN_MIN: u32 = 512;
pub const PAGE_LEN_MAX: u32 = 65536;
/// Offset of the "reserved bytes per page" byte in page 1's header.
const RESERVE_OFFSET: usize = 20;
/// SQLCipher 4's reserve per page with its default settings: a 16-byte IV
/// and a 64-byte HMAC-SHA512. A page image with a smaller reserve cannot be
/// written into an encrypted database as it is: the cipher would overwrite
/// the end of its content.
pub const SQLCIPHER_RESERVE_LEN: u8 = 80;

/// The stream's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub page_len: u32,
    pub page_count: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(TAG);
        h[4..8].copy_from_slice(&self.page_len.to_le_bytes());
        h[8..].copy_from_slice(&self.page_count.to_le_bytes());
        h
    }

    /// Reads a header; `None` when `h` does not start with the tag, an
    /// error when it does but the values are impossible.
    pub fn decode(h: &[u8; HEADER_LEN]) -> Option<Result<Header, String>> {
        if &h[..4] != TAG {
            return None;
        }
        let page_len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let page_count = u64::from_le_bytes(h[8..].try_into().expect("8 bytes"));
        Some(if !(PAGE_LEN_MIN..=PAGE_LEN_MAX).contains(&page_len) || !page_len.is_power_of_two() {
            Err(format!("the page size {page_len} is not one SQLite uses"))
        } else if page_count == 0 || page_count > u64::from(u32::MAX) {
            Err(format!("the page count {page_count} is not possible"))
        } else {
            Ok(Header { page_len, page_count })
        })
    }

    /// Bytes of the whole stream.
    pub fn stream_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.page_len) * self.page_count
    }
}

/// The page that holds the byte at offset 1 GiB, which SQLite keeps free
/// for its file locks (it is in the stream, as zeros, but never written
/// back).
pub fn lock_page(page_len: u32) -> u64 {
    (1u64 << 30) / u64::from(page_len) + 1
}

/// The reserved bytes per page that page 1 declares.
pub fn reserve_len(page1: &[u8]) -> u8 {
    page1.get(RESERVE_OFFSET).copied().unwrap_or(0)
}

/// Prepares a page for the stream: zeroes its reserved bytes (SQLCipher's
/// IV and HMAC of the page as stored: meaningless once decrypted,
/// incompressible, and rewritten by the destination's cipher), and
/// overwrites every occurrence of `secret` (the device token, which never
/// goes into a backup) with `-` of the same length, so the record keeps
/// its shape and the database stays valid.
pub fn scrub(page: &mut [u8], reserve: u8, secret: &[u8]) {
    let keep = page.len().saturating_sub(usize::from(reserve));
    page[keep..].fill(0);
    if secret.len() < 8 {
        return;
    }
    let mut i = 0;
    while i + secret.len() <= keep {
        if &page[i..i + secret.len()] == secret {
            page[i..i + secret.len()].fill(b'-');
            i += secret.len();
        } else {
            i += 1;
        }
    }
}

/// Checks page 1 of a stream before anything is written: SQLite's header,
/// the same page size as the stream says, and a reserve the destination
/// can keep (`encrypted`: it needs SQLCipher's reserve).
pub fn check_page1(page1: &[u8], header: &Header, encrypted: bool) -> Result<(), PageError> {
    if page1.len() < 100 || &page1[..16] != b"SQLite format 3\0" {
        return Err(PageError::Damaged("the first page is not a SQLite header".into()));
    }
    let raw = u16::from_be_bytes([page1[16], page1[17]]);
    let declared = if raw == 1 { 65536 } else { u32::from(raw) };
    if declared != header.page_len {
        return Err(PageError::Damaged(format!(
            "the first page says pages of {declared} bytes, the stream {}",
            header.page_len
        )));
    }
    if encrypted && reserve_len(page1) != SQLCIPHER_RESERVE_LEN {
        return Err(PageError::ReserveTooSmall(reserve_len(page1)));
    }
    Ok(())
}

/// Why a page stream cannot be written as it is.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    /// The pages come from a plaintext till (no room for SQLCipher's IV
    /// and HMAC): the restore goes through a logical copy instead.
    #[error("pages with {0} reserved bytes cannot be encrypted in place")]
    ReserveTooSmall(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page1(page_len: u32, reserve: u8) -> Vec<u8> {
        let mut p = vec![7u8; page_len as usize];
        p[..16].copy_from_slice(b"SQLite format 3\0");
        let raw = if page_len == 65536 { 1u16 } else { page_len as u16 };
        p[16..18].copy_from_slice(&raw.to_be_bytes());
        p[20] = reserve;
        p
    }

    #[test]
    fn headers_round_trip_and_impossible_values_are_refused() {
        let h = Header { page_len: 4096, page_count: 3 };
        assert_eq!(Header::decode(&h.encode()), Some(Ok(h)));
        assert_eq!(h.stream_len(), 16 + 3 * 4096);
        let mut other = h.encode();
        other[0] = b'X';
        assert_eq!(Header::decode(&other), None, "another format is not this one");
        for (len, count) in [(4095u32, 1u64), (256, 1), (131072, 1), (4096, 0), (4096, u64::from(u32::MAX) + 1)] {
            let mut raw = h.encode();
            raw[4..8].copy_from_slice(&len.to_le_bytes());
            raw[8..].copy_from_slice(&count.to_le_bytes());
            assert!(matches!(Header::decode(&raw), Some(Err(_))), "{len} x {count} must be refused");
        }
    }

    #[test]
    fn scrub_zeroes_the_reserve_and_masks_the_secret_everywhere() {
        let token = b"tsd_0123456789abcdef0123456789abcdef";
        let mut p = vec![b'a'; 4096];
        p[100..100 + token.len()].copy_from_slice(token);
        p[3000..3000 + token.len()].copy_from_slice(token);
        // The last copy ends right where the reserve starts.
        p[4016 - token.len()..4016].copy_from_slice(token);
        scrub(&mut p, 80, token);
        assert!(p[4016..].iter().all(|&b| b == 0), "the reserve is zeroed");
        assert!(!p.windows(token.len()).any(|w| w == token), "no copy of the secret is left");
        assert_eq!(p.len(), 4096, "the page keeps its length");
        assert_eq!(&p[100..100 + token.len()], &vec![b'-'; token.len()][..]);
        // Short secrets are not searched for (they could match anything).
        let mut q = vec![b'x'; 512];
        scrub(&mut q, 0, b"xx");
        assert!(q.iter().all(|&b| b == b'x'));
    }

    #[test]
    fn the_lock_page_is_the_one_at_one_gibibyte() {
        assert_eq!(lock_page(4096), 262_145);
        assert_eq!(lock_page(65536), 16_385);
        assert_eq!(lock_page(512), 2_097_153);
    }

    #[test]
    fn page1_must_match_the_stream_and_the_destination() {
        let h = Header { page_len: 4096, page_count: 10 };
        assert_eq!(check_page1(&page1(4096, 80), &h, true), Ok(()));
        assert_eq!(check_page1(&page1(4096, 0), &h, false), Ok(()));
        assert_eq!(check_page1(&page1(4096, 0), &h, true), Err(PageError::ReserveTooSmall(0)));
        assert!(matches!(check_page1(&page1(8192, 80), &h, true), Err(PageError::Damaged(_))));
        assert!(matches!(check_page1(&vec![0u8; 4096], &h, false), Err(PageError::Damaged(_))));
        let big = Header { page_len: 65536, page_count: 1 };
        assert_eq!(check_page1(&page1(65536, 80), &big, true), Ok(()));
    }
}
