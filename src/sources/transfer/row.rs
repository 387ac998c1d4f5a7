//! What the format decoders hand back: one record, or one row that cannot be a record, each
//! with its number in the file; and the read error that ended a stream early.

use std::io;

use crate::model::Record;

/// One row of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// A record, numbered from 1 among the file's rows (bad rows count too).
    Record { row: u64, fields: Record },
    /// A row that cannot be a record. `row` 0 is the file itself (a bad header, say).
    Bad {
        row: u64,
        /// Where it is, for people: `row 3 (line 4)`, `record 2 (byte 118)`.
        place: String,
        message: String,
    },
}

/// A read error that stopped a file: every row before `place` was handed on.
#[derive(Debug)]
pub struct Broken {
    /// The row being read when it happened.
    pub row: u64,
    pub place: String,
    pub error: io::Error,
}

impl Broken {
    pub fn new(row: u64, place: String, error: io::Error) -> Self {
        Broken { row, place, error }
    }

    /// What to tell people: a cut-off stream (a truncated gzip, say) is named as such.
    pub fn message(&self) -> String {
        let what = if self.error.kind() == io::ErrorKind::UnexpectedEof {
            "the file ends early (truncated?)"
        } else {
            "cannot read on"
        };
        format!(
            "{}: {what}: {}; the rows before it were read, the rest of the file is missing",
            self.place, self.error
        )
    }
}

/// Reads one physical line (with its `\n`, if any) into `buf`, which is cleared first.
/// `Ok(false)` at the end of the stream.
pub fn read_line(input: &mut dyn io::BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    Ok(input.read_until(b'\n', buf)? > 0)
}

/// `line` without its `\n` / `\r\n`.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `line` without a leading UTF-8 byte-order mark.
pub fn strip_bom(line: &[u8]) -> &[u8] {
    line.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(line)
}

/// A UTF-8 error message that helps: the likely cause is the file's encoding.
pub fn not_utf8(what: &str) -> String {
    format!(
        "{what} is not valid UTF-8 (is the file in another encoding? set the format's `encoding`, e.g. latin-1)"
    )
}
