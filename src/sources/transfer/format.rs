//! How a Transfer file is laid out, as the pipeline file says it (`files[].format`): one key,
//! the kind of file, with that kind's settings. Compression (gzip, zip) and OpenPGP
//! encryption are not formats: they are found from the key's suffixes and the content
//! ([`super::reader`]).

use std::path::PathBuf;

use serde::Deserialize;

/// The record layout of a file (one key: its kind).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "FormatKinds")]
pub enum FileFormat {
    /// Delimited text.
    Csv(CsvFormat),
    /// Fixed-width text lines, cut by a layout file.
    FixedWidth(FixedWidthFormat),
    /// One JSON object a line.
    Ndjson(NdjsonFormat),
    /// XML, one record an element at a configured path.
    Xml(XmlFormat),
}

/// `format:` as written: one key naming the kind (YAML has no other way to say an enum
/// without tags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatKinds {
    #[serde(default)]
    csv: Option<CsvFormat>,
    #[serde(default)]
    fixed_width: Option<FixedWidthFormat>,
    #[serde(default)]
    ndjson: Option<NdjsonFormat>,
    #[serde(default)]
    xml: Option<XmlFormat>,
}

impl TryFrom<FormatKinds> for FileFormat {
    type Error = String;

    fn try_from(k: FormatKinds) -> Result<Self, String> {
        let mut kinds = Vec::new();
        if let Some(c) = k.csv {
            kinds.push(FileFormat::Csv(c));
        }
        if let Some(f) = k.fixed_width {
            kinds.push(FileFormat::FixedWidth(f));
        }
        if let Some(n) = k.ndjson {
            kinds.push(FileFormat::Ndjson(n));
        }
        if let Some(x) = k.xml {
            kinds.push(FileFormat::Xml(x));
        }
        match kinds.len() {
            1 => Ok(kinds.remove(0)),
            n => Err(format!(
                "format: name exactly one kind (csv, fixed_width, ndjson or xml); {n} given"
            )),
        }
    }
}

impl FileFormat {
    /// The format's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            FileFormat::Csv(_) => "csv",
            FileFormat::FixedWidth(_) => "fixed_width",
            FileFormat::Ndjson(_) => "ndjson",
            FileFormat::Xml(_) => "xml",
        }
    }

    /// The text encoding the format reads (NDJSON is always UTF-8, as JSON requires).
    pub fn encoding(&self) -> Encoding {
        match self {
            FileFormat::Csv(c) => c.encoding,
            FileFormat::FixedWidth(f) => f.encoding,
            FileFormat::Ndjson(_) => Encoding::Utf8,
            FileFormat::Xml(x) => x.encoding,
        }
    }

    /// Checks settings that serde cannot (one-byte delimiters, a record path).
    pub fn check(&self) -> Result<(), String> {
        match self {
            FileFormat::Csv(c) => {
                let one_byte = |name: &str, v: &str| {
                    if v.len() == 1 && v.is_ascii() {
                        Ok(())
                    } else {
                        Err(format!(
                            "format.csv.{name}: {v:?} must be one ASCII character"
                        ))
                    }
                };
                one_byte("delimiter", &c.delimiter)?;
                if let Some(q) = &c.quote {
                    one_byte("quote", q)?;
                    if q == &c.delimiter {
                        return Err("format.csv: quote and delimiter must differ".into());
                    }
                }
                if !c.header && c.columns.is_empty() {
                    return Err("format.csv: a file without a header row needs `columns`".into());
                }
                if c.max_record_lines == 0 {
                    return Err("format.csv.max_record_lines must be at least 1".into());
                }
                Ok(())
            }
            FileFormat::FixedWidth(_) | FileFormat::Ndjson(_) => Ok(()),
            FileFormat::Xml(x) => {
                if x.record.split('/').any(str::is_empty) {
                    return Err(format!(
                        "format.xml.record: {:?} must be an element path like `Members/Member`",
                        x.record
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Delimited text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvFormat {
    /// One ASCII character (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// The quote character (default `"`; a doubled quote inside quotes is one quote);
    /// `null` when the file has no quoting.
    #[serde(default = "default_quote")]
    pub quote: Option<String>,
    /// Whether the first row names the columns (default true).
    #[serde(default = "yes")]
    pub header: bool,
    /// Column names when there is no header row (with a header: must equal it, if given).
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub encoding: Encoding,
    /// A quoted field may span lines; a record still open after this many lines is taken as
    /// broken quoting: its first line is refused and reading goes on at the next line.
    #[serde(default = "default_max_record_lines")]
    pub max_record_lines: usize,
}

fn default_delimiter() -> String {
    ",".into()
}
fn default_quote() -> Option<String> {
    Some("\"".into())
}
fn yes() -> bool {
    true
}
fn default_max_record_lines() -> usize {
    50
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat {
            delimiter: default_delimiter(),
            quote: default_quote(),
            header: true,
            columns: Vec::new(),
            encoding: Encoding::default(),
            max_record_lines: default_max_record_lines(),
        }
    }
}

/// Fixed-width lines.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedWidthFormat {
    /// The layout file (relative to the pipeline file): see [`super::fixed::Layout`].
    pub layout: PathBuf,
    #[serde(default)]
    pub encoding: Encoding,
}

/// NDJSON (JSON Lines): one object a line; blank lines are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NdjsonFormat {}

/// XML: every element at `record` (a `/`-separated path from the root element, e.g.
/// `Members/Member`) is one record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlFormat {
    pub record: String,
    #[serde(default)]
    pub encoding: Encoding,
}

/// The text encodings a file may be in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    /// UTF-8 (a leading byte-order mark is skipped). Bytes that are not UTF-8 make the row
    /// they are in an error.
    #[default]
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// ISO-8859-1 (decoded as windows-1252, as the WHATWG Encoding Standard and browsers do).
    #[serde(rename = "latin-1", alias = "iso-8859-1", alias = "latin1")]
    Latin1,
    /// Windows code page 1252.
    #[serde(rename = "windows-1252", alias = "cp1252")]
    Windows1252,
}

impl Encoding {
    /// The `encoding_rs` decoder, or `None` for UTF-8 (read as is, checked per field).
    pub fn legacy(self) -> Option<&'static encoding_rs::Encoding> {
        match self {
            Encoding::Utf8 => None,
            Encoding::Latin1 | Encoding::Windows1252 => Some(encoding_rs::WINDOWS_1252),
        }
    }
}

/// Whether a file replaces its entity's data or adds to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// Each record is a change (upsert) to its resource.
    #[default]
    Increment,
    /// The file is the entity's whole data set: a versioned, atomic dataset load (bulk-load).
    FullRefresh,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_from_yaml_and_unknown_keys_are_refused() {
        let f: FileFormat = serde_yaml_ng::from_str("csv: { delimiter: '|' }").unwrap();
        let FileFormat::Csv(c) = &f else {
            panic!("{f:?}")
        };
        assert_eq!((c.delimiter.as_str(), c.header), ("|", true));
        assert_eq!(c.quote.as_deref(), Some("\""));
        f.check().unwrap();
        let f: FileFormat =
            serde_yaml_ng::from_str("csv: { quote: null, encoding: latin-1 }").unwrap();
        assert_eq!(f.encoding(), Encoding::Latin1);
        assert!(serde_yaml_ng::from_str::<FileFormat>("csv: { delimeter: ',' }").is_err());
        assert!(serde_yaml_ng::from_str::<FileFormat>("parquet: {}").is_err());
        assert!(serde_yaml_ng::from_str::<FileFormat>("{}").is_err());
        assert!(serde_yaml_ng::from_str::<FileFormat>("{ ndjson: {}, csv: {} }").is_err());
        assert!(serde_yaml_ng::from_str::<FileFormat>("csv: { encoding: ebcdic }").is_err());
        let f: FileFormat = serde_yaml_ng::from_str("ndjson: {}").unwrap();
        assert_eq!(f.name(), "ndjson");
        let f: FileFormat = serde_yaml_ng::from_str("xml: { record: A//B }").unwrap();
        assert!(f.check().is_err());
        let f: FileFormat = serde_yaml_ng::from_str("csv: { delimiter: ';;' }").unwrap();
        assert!(f.check().is_err());
        let f: FileFormat = serde_yaml_ng::from_str("csv: { header: false }").unwrap();
        assert!(f.check().unwrap_err().contains("columns"));
        let m: LoadMode = serde_yaml_ng::from_str("full-refresh").unwrap();
        assert_eq!(m, LoadMode::FullRefresh);
        assert!(serde_yaml_ng::from_str::<LoadMode>("full").is_err());
    }
}
