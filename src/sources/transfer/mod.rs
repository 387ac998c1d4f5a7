//! Files uploaded through AWS Transfer Family (landing in S3, or a local folder laid out like
//! the bucket), decoded into [`SourceChange`]s.
//!
//! - [`event`]: which uploads a Transfer Family or S3 event announces;
//! - [`format`]: the file layouts the pipeline file names (`files[].format`), and load modes;
//! - [`reader`]: the object as a stream, unwrapped from OpenPGP ([`pgp`]), gzip and zip;
//! - [`csv`], [`fixed`], [`ndjson`], [`xml`]: one decoder per layout, each handing back
//!   [`row::Row`]s.
//!
//! [`read_object`] puts them together for one announced object, streaming: records go to a
//! sink one by one as a change or a rejection naming the file and the row, so a bad row never
//! sinks the rest of the file, and a file never sits whole in memory (an encrypted one is
//! decrypted to a temporary file first; see [`pgp`]).
//!
//! Every record is an upsert keyed by its configured key columns. Its sequence is
//! `micros(20) ‖ entry(6) ‖ row(12)`: the upload's time in microseconds (the event's), the
//! zip entry (0 outside a zip) and the row, so a later upload of the same record wins and
//! rows of one file apply in file order.
//!
//! A `full-refresh` file is a whole dataset: [`crate::bulk`] loads it as a new dataset version,
//! and fails that load when [`FileReport::broken`] says the file could not be read whole.

pub mod csv;
pub mod event;
pub mod fixed;
pub mod format;
pub mod ndjson;
pub mod pgp;
pub mod reader;
pub mod row;
pub mod xml;

use std::io::{BufRead, BufReader, Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

pub use event::{Announced, upload_completed, uploads};
pub use format::{CsvFormat, Encoding, FileFormat, LoadMode};

use crate::model::{Op, RecordKey, Rejection, Sequence, SourceChange, Stage};
use crate::objects::{ObjectError, ObjectStore};
use crate::outcome::{Issue, Outcome};
use crate::sources::Decoded;
use reader::{Magic, ObjectReader, ReadSeek, Transcode};
use row::{Broken, Row};

/// An uploaded object bound to its source: the `files` entry its key matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferTarget {
    pub source: String,
    pub entity: String,
    /// The key columns.
    pub key: Vec<String>,
    pub format: FileFormat,
    pub load: LoadMode,
    /// The `match` glob that bound it.
    pub pattern: String,
    /// A fixed-width file's layout file (resolved).
    pub layout: Option<PathBuf>,
    /// The source's OpenPGP secret key file and passphrase, if it has one.
    pub pgp: Option<(PathBuf, Option<String>)>,
}

/// What reading one object did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    /// Rows read (records and bad rows; bad headers and whole-file failures count 0).
    pub rows: u64,
    pub changes: u64,
    pub rejected: u64,
    /// Files read (1, or the entries of a zip).
    pub entries: u64,
    pub load: LoadMode,
    /// Where the file could not be read whole, if it could not (it cannot be opened,
    /// decrypted or unzipped, its header is bad, or it breaks off): the first such place,
    /// also sent as a rejection. An increment keeps the rows read before it; a full refresh
    /// must not be published without the rest.
    pub broken: Option<String>,
}

impl FileReport {
    /// Counts the rejection of a file (or of the rest of it) and remembers the first.
    fn broke(&mut self, place: &str, message: &str) {
        self.rejected += 1;
        self.broken
            .get_or_insert_with(|| format!("{place}: {message}"));
    }
}

/// The first rejection of `target`'s file, naming it and the place.
fn rejection(target: &TransferTarget, place: &str, message: &str) -> Rejection {
    Rejection {
        stage: Stage::Ingest,
        record: format!("{}/{} {place}", target.source, target.entity),
        change: None,
        raw: Some(json!({ "file": place })),
        outcome: Outcome::from(Issue::error("structure", message.to_owned()).at(place.to_owned()))
            .to_fhir(),
    }
}

/// The rejection of a whole file (or zip entry) that cannot be read.
pub fn file_rejection(target: &TransferTarget, uri: &str, message: &str) -> Rejection {
    rejection(target, uri, message)
}

/// Reads one uploaded object: every row goes to `sink` as a change or a rejection, in file
/// order. A file that cannot be read at all is one rejection (`Ok`), unless the store failed
/// in a way worth retrying (`Err`).
pub fn read_object(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    key: &str,
    target: &TransferTarget,
    observed_at: DateTime<Utc>,
    sink: &mut dyn FnMut(Decoded),
) -> Result<FileReport, ObjectError> {
    let uri = format!("s3://{bucket}/{key}");
    let mut report = FileReport {
        load: target.load,
        ..FileReport::default()
    };
    let reject_file = |report: &mut FileReport, sink: &mut dyn FnMut(Decoded), message: String| {
        report.broke(&uri, &message);
        sink(Decoded::Rejected(file_rejection(target, &uri, &message)));
    };
    let retry = |e: &std::io::Error| reader::object_error(e).is_some_and(ObjectError::is_retryable);

    let object = match ObjectReader::open(store, bucket, key) {
        Ok(o) => o,
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            reject_file(&mut report, sink, e.to_string());
            return Ok(report);
        }
    };
    let mut base: BufReader<Box<dyn ReadSeek>> =
        BufReader::with_capacity(reader::CHUNK, Box::new(object));
    let magic = match reader::sniff(&mut base) {
        Ok(m) => m,
        Err(e) if retry(&e) => return Err(into_object_error(e, bucket, key)),
        Err(e) => {
            reject_file(&mut report, sink, format!("cannot read: {e}"));
            return Ok(report);
        }
    };
    if magic == Magic::ArmoredPgp || reader::encrypted_suffix(key) {
        let Some((path, passphrase)) = &target.pgp else {
            reject_file(
                &mut report,
                sink,
                format!(
                    "the file is OpenPGP-encrypted but source {:?} names no pgp key",
                    target.source
                ),
            );
            return Ok(report);
        };
        let decrypted = pgp::DecryptionKey::load(path, passphrase.as_deref())
            .map_err(pgp::DecryptError::Refused)
            .and_then(|k| pgp::decrypt(&mut base, &k));
        match decrypted {
            Ok(file) => {
                base = BufReader::with_capacity(reader::CHUNK, Box::new(file));
            }
            Err(pgp::DecryptError::Read(e)) if retry(&e) => {
                return Err(into_object_error(e, bucket, key));
            }
            Err(e) => {
                reject_file(&mut report, sink, e.to_string());
                return Ok(report);
            }
        }
    }
    let layout = match &target.layout {
        Some(p) => match fixed::Layout::load(p) {
            Ok(l) => Some(l),
            Err(e) => {
                reject_file(&mut report, sink, e.to_string());
                return Ok(report);
            }
        },
        None => None,
    };
    let ctx = Ctx {
        target,
        layout: layout.as_ref(),
        micros: observed_at.timestamp_micros().max(0) as u64,
        observed_at,
    };
    let magic = match reader::sniff(&mut base) {
        Ok(m) => m,
        Err(e) if retry(&e) => return Err(into_object_error(e, bucket, key)),
        Err(e) => {
            reject_file(&mut report, sink, format!("cannot read: {e}"));
            return Ok(report);
        }
    };
    let result = if magic == Magic::Zip {
        read_zip(base, &uri, &ctx, &mut report, sink)
    } else {
        let stream: Box<dyn BufRead + Send> = if magic == Magic::Gzip {
            reader::buffered(flate2::bufread::MultiGzDecoder::new(base))
        } else {
            Box::new(base)
        };
        report.entries = 1;
        read_stream(stream, &uri, 0, &ctx, &mut report, sink)
    };
    match result {
        Err(e) if retry(&e) => Err(into_object_error(e, bucket, key)),
        _ => Ok(report),
    }
}

fn into_object_error(e: std::io::Error, bucket: &str, key: &str) -> ObjectError {
    match e.into_inner().map(|inner| inner.downcast::<ObjectError>()) {
        Some(Ok(o)) => *o,
        _ => ObjectError::Io {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message: "read failed".into(),
            retryable: true,
        },
    }
}

/// What every row of one file needs.
struct Ctx<'a> {
    target: &'a TransferTarget,
    layout: Option<&'a fixed::Layout>,
    micros: u64,
    observed_at: DateTime<Utc>,
}

/// Each entry of a zip in turn (folders skipped). `Err` only for a retryable store error.
fn read_zip<R: Read + Seek>(
    base: R,
    uri: &str,
    ctx: &Ctx<'_>,
    report: &mut FileReport,
    sink: &mut dyn FnMut(Decoded),
) -> Result<(), std::io::Error> {
    let mut archive = match zip::ZipArchive::new(base) {
        Ok(a) => a,
        Err(zip::result::ZipError::Io(e)) if reader::object_error(&e).is_some() => return Err(e),
        Err(e) => {
            let message = format!("not a readable zip archive: {e}");
            report.broke(uri, &message);
            sink(Decoded::Rejected(file_rejection(ctx.target, uri, &message)));
            return Ok(());
        }
    };
    for i in 0..archive.len() {
        let entry = match archive.by_index(i) {
            Ok(e) => e,
            Err(zip::result::ZipError::Io(e)) if reader::object_error(&e).is_some() => {
                return Err(e);
            }
            Err(e) => {
                let place = format!("{uri}!entry {}", i + 1);
                let message = format!("cannot read the zip entry: {e}");
                report.broke(&place, &message);
                sink(Decoded::Rejected(file_rejection(
                    ctx.target, &place, &message,
                )));
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        let name = format!("{uri}!{}", entry.name());
        report.entries += 1;
        // The entry is read as it is decompressed; a gzip inside a zip is not unwrapped.
        let stream: Box<dyn BufRead + '_> = Box::new(BufReader::with_capacity(64 * 1024, entry));
        read_stream(stream, &name, (i + 1) as u64, ctx, report, sink)?;
    }
    Ok(())
}

/// Decodes one stream of text with the target's format. `Err` only for an I/O error that
/// came from the object store (the caller decides whether to retry); any other read error
/// is a rejection naming where the file broke off.
fn read_stream<'s>(
    stream: Box<dyn BufRead + 's>,
    name: &str,
    entry: u64,
    ctx: &Ctx<'_>,
    report: &mut FileReport,
    sink: &mut dyn FnMut(Decoded),
) -> Result<(), std::io::Error> {
    let mut stream: Box<dyn BufRead + 's> = match ctx.target.format.encoding().legacy() {
        Some(enc) => Box::new(Transcode::new(stream, enc)),
        None => stream,
    };
    let mut emit = |row: Row| {
        // Row 0 is the file itself (a bad header), not one of its rows.
        let header = match &row {
            Row::Bad {
                row: 0,
                place,
                message,
            } => {
                report.broke(&format!("{name} {place}"), message);
                true
            }
            _ => {
                report.rows += 1;
                false
            }
        };
        let d = decode_row(row, name, entry, ctx);
        match &d {
            Decoded::Change(_) => report.changes += 1,
            // A bad header is counted once, as the file's rejection, above.
            Decoded::Rejected(_) if header => {}
            Decoded::Rejected(_) => report.rejected += 1,
        }
        sink(d);
    };
    let result: Result<(), Broken> = match &ctx.target.format {
        FileFormat::Csv(c) => csv::read(&mut stream, c, &mut emit),
        FileFormat::Ndjson(_) => ndjson::read(&mut stream, &mut emit),
        FileFormat::Xml(x) => xml::read(&mut stream, x, &mut emit),
        FileFormat::FixedWidth(_) => match ctx.layout {
            Some(l) => fixed::read(&mut stream, l, &mut emit),
            None => {
                emit(Row::Bad {
                    row: 0,
                    place: "layout".into(),
                    message: "a fixed-width file needs a layout".into(),
                });
                Ok(())
            }
        },
    };
    if let Err(broken) = result {
        if reader::object_error(&broken.error).is_some() {
            return Err(broken.error);
        }
        let place = format!("{name} {}", broken.place);
        report.broke(&place, &broken.message());
        sink(Decoded::Rejected(rejection(
            ctx.target,
            &place,
            &broken.message(),
        )));
    }
    Ok(())
}

/// A row as a change (or as the rejection it is).
fn decode_row(row: Row, name: &str, entry: u64, ctx: &Ctx<'_>) -> Decoded {
    let t = ctx.target;
    match row {
        Row::Bad { place, message, .. } => {
            Decoded::Rejected(rejection(t, &format!("{name} {place}"), &message))
        }
        Row::Record { row, fields } => {
            let mut key = Vec::with_capacity(t.key.len());
            for k in &t.key {
                match fields.get(k) {
                    None | Some(Value::Null) => {
                        return Decoded::Rejected(rejection(
                            t,
                            &format!("{name} row {row}"),
                            &format!("key column {k:?} is missing or empty"),
                        ));
                    }
                    Some(v) => key.push((k.clone(), v.clone())),
                }
            }
            let digits = format!("{:020}{entry:06}{row:012}", ctx.micros);
            let sequence = Sequence::parse(&digits).unwrap_or_else(|_| Sequence::from(row));
            Decoded::Change(SourceChange {
                source: t.source.clone(),
                entity: t.entity.clone(),
                key: RecordKey::from_pairs(key),
                op: Op::Upsert,
                sequence,
                observed_at: ctx.observed_at,
                data: fields,
            })
        }
    }
}
