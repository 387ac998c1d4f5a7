//! Bytes of an uploaded object, as a stream: ranged reads through the object store, then the
//! layers the upload came wrapped in, found from the key's suffix and the content:
//!
//! - OpenPGP (`.pgp`, `.gpg`, `.asc`, or armored content): decrypted with the source's key
//!   into a temporary file first ([`super::pgp`]), because OpenPGP checks integrity only at
//!   the end of the message and no record may be published from a file that then fails it;
//! - gzip (magic `1F 8B`, members concatenated as `gzip` and `cat` make them): decompressed
//!   as it is read;
//! - zip (magic `PK 03 04`): each entry read in turn, by seeking in the object (or the
//!   decrypted file) rather than reading it whole;
//! - a legacy text encoding (latin-1, windows-1252): transcoded to UTF-8 as it is read.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use crate::objects::{ObjectError, ObjectStore};

/// Bytes asked of the store at a time.
pub const CHUNK: usize = 1024 * 1024;

/// Anything that reads and seeks (a boxed object or spooled file).
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// One object, read by ranges.
#[derive(Debug)]
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    size: u64,
    pos: u64,
}

impl ObjectReader {
    /// Opens an object (asks its size).
    pub fn open(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectReader, ObjectError> {
        let size = store.size(bucket, key)?;
        Ok(ObjectReader {
            store,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            pos: 0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(CHUNK);
        let bytes = self
            .store
            .read_range(&self.bucket, &self.key, self.pos, want)
            .map_err(io::Error::other)?;
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

/// The object-store error inside an I/O error, if that is what it is.
pub fn object_error(e: &io::Error) -> Option<&ObjectError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ObjectError>())
}

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    Gzip,
    Zip,
    ArmoredPgp,
    /// Anything else (text, or binary OpenPGP, which is told by the key's suffix).
    Other,
}

/// Looks at the first bytes without consuming them.
pub fn sniff(r: &mut dyn BufRead) -> io::Result<Magic> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Magic::Gzip
    } else if head.starts_with(b"PK\x03\x04") {
        Magic::Zip
    } else if head.starts_with(b"-----BEGIN PGP MESSAGE") {
        Magic::ArmoredPgp
    } else {
        Magic::Other
    })
}

/// Whether a key's suffix says it is OpenPGP-encrypted.
pub fn encrypted_suffix(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    [".pgp", ".gpg", ".asc"].iter().any(|s| lower.ends_with(s))
}

/// A stream of text in a legacy encoding, read as UTF-8.
pub struct Transcode<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    out: Vec<u8>,
    start: usize,
    done: bool,
}

impl<R> std::fmt::Debug for Transcode<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcode")
            .field("encoding", &self.decoder.encoding().name())
            .finish_non_exhaustive()
    }
}

impl<R: BufRead> Transcode<R> {
    pub fn new(inner: R, encoding: &'static encoding_rs::Encoding) -> Self {
        Transcode {
            inner,
            // No BOM sniffing: the pipeline file says what the encoding is.
            decoder: encoding.new_decoder_without_bom_handling(),
            out: Vec::new(),
            start: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Transcode<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Transcode<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.start >= self.out.len() && !self.done {
            self.out.clear();
            self.start = 0;
            let src = self.inner.fill_buf()?;
            let last = src.is_empty();
            // A single-byte encoding turns n bytes into at most 3n bytes of UTF-8.
            let cap = self
                .decoder
                .max_utf8_buffer_length(src.len())
                .unwrap_or(src.len() * 3 + 16);
            self.out.resize(cap, 0);
            let (_, read, written, _) = self.decoder.decode_to_utf8(src, &mut self.out, last);
            self.out.truncate(written);
            self.inner.consume(read);
            self.done = last;
        }
        Ok(&self.out[self.start..])
    }

    fn consume(&mut self, amt: usize) {
        self.start = (self.start + amt).min(self.out.len());
    }
}

/// A buffered reader over a boxed reader.
pub fn buffered<R: Read + Send + 'static>(r: R) -> Box<dyn BufRead + Send> {
    Box::new(BufReader::with_capacity(64 * 1024, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::LocalBuckets;

    #[test]
    fn an_object_reads_by_ranges_and_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.bin"), &data).unwrap();
        let store = LocalBuckets::new().with_bucket("b", dir.path()).shared();
        let mut r = ObjectReader::open(store, "b", "big.bin").unwrap();
        assert_eq!(r.size(), 3_000_000);
        let mut all = Vec::new();
        BufReader::new(&mut r).read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        r.seek(SeekFrom::End(-2)).unwrap();
        let mut two = Vec::new();
        r.read_to_end(&mut two).unwrap();
        assert_eq!(two, &data[data.len() - 2..]);
        assert!(r.seek(SeekFrom::Current(-10_000_000)).is_err());
    }

    #[test]
    fn a_missing_object_keeps_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBuckets::new().with_bucket("b", dir.path()).shared();
        assert!(matches!(
            ObjectReader::open(store, "b", "none.csv"),
            Err(ObjectError::NotFound { .. })
        ));
        let e = io::Error::other(ObjectError::UnknownBucket { bucket: "x".into() });
        assert!(matches!(
            object_error(&e),
            Some(ObjectError::UnknownBucket { .. })
        ));
        assert!(object_error(&io::Error::other("plain")).is_none());
    }

    #[test]
    fn latin1_is_transcoded_to_utf8_across_buffer_edges() {
        let latin1: Vec<u8> = b"Jos\xe9,M\xfcller\n".repeat(10_000);
        let mut r = Transcode::new(
            BufReader::with_capacity(7, &latin1[..]),
            encoding_rs::WINDOWS_1252,
        );
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "José,Müller\n".repeat(10_000));
    }

    #[test]
    fn magic_and_suffixes() {
        assert_eq!(sniff(&mut &[0x1f, 0x8b, 8][..]).unwrap(), Magic::Gzip);
        assert_eq!(sniff(&mut &b"PK\x03\x04.."[..]).unwrap(), Magic::Zip);
        assert_eq!(
            sniff(&mut &b"-----BEGIN PGP MESSAGE-----"[..]).unwrap(),
            Magic::ArmoredPgp
        );
        assert_eq!(sniff(&mut &b"a,b"[..]).unwrap(), Magic::Other);
        assert!(encrypted_suffix("in/members.csv.gz.PGP"));
        assert!(!encrypted_suffix("in/members.csv"));
    }
}
