//! Where DMS puts its files, and what a file's key says: schema, table, and whether it is a
//! full-load file (`LOAD00000001.parquet`, a **hexadecimal** counter, optionally
//! `SEGMENT<n>_` for a parallel load) or a CDC file (`yyyyMMdd-HHmmssSSS(S).parquet`, 9 or 10
//! digits after the dash), with optional date-partition folders between the table and the file
//! (`DatePartitionSequence` YYYYMMDD, YYYYMMDDHH, YYYYMM, MMYYYYDD or DDMMYYYY, each with the
//! `DatePartitionDelimiter` SLASH, DASH, UNDERSCORE or NONE), or a parallel-load partition folder
//! before a full-load file.
//!
//! Layout: `[prefix/]schema/table/[partition folders/]file`; the prefix (DMS `BucketFolder`) is
//! known from the configured location, so schema and table are the two folders after it.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, Utc};

/// What kind of file, with what its name says about its place in the table's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmsFileKind {
    /// A full-load file: `[SEGMENT<segment>_]LOAD<counter>.parquet`.
    Load { segment: u32, counter: u64 },
    /// A CDC file named for the time it was written (UTC).
    Cdc {
        /// `yyyyMMddHHmmss` followed by 4 fraction digits (a 9-digit name gets a trailing 0).
        stamp: u64,
        at: DateTime<Utc>,
    },
}

/// A DMS file's key, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsPath {
    /// The key as given.
    pub key: String,
    pub schema: String,
    pub table: String,
    /// The folders between the table and the file (a date partition or a load partition).
    pub partition: Option<String>,
    /// The file name.
    pub file: String,
    pub kind: DmsFileKind,
}

/// A key that is not a DMS Parquet file of the expected layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a file DMS writes for a table (a marker, a CSV file, a file of someone else's).
    #[error("{key}: not a DMS Parquet data file ({reason})")]
    NotADmsFile { key: String, reason: String },
    /// Looks like a DMS file but cannot be one.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl DmsPath {
    /// Parses the key of an object below `prefix` (the DMS bucket folder; empty for none).
    pub fn parse(key: &str, prefix: &str) -> Result<DmsPath, PathError> {
        let not_dms = |reason: &str| PathError::NotADmsFile {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let invalid = |reason: String| PathError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let prefix = prefix.trim_matches('/');
        let rest = if prefix.is_empty() {
            key
        } else {
            key.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(|| not_dms(&format!("not below the folder {prefix:?}")))?
        };
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() < 3 || segments.iter().any(|s| s.is_empty()) {
            return Err(not_dms("expected schema/table/file"));
        }
        let file = segments[segments.len() - 1];
        if file.starts_with('_') || file.starts_with('.') {
            return Err(not_dms("a marker or hidden file"));
        }
        let middle = &segments[2..segments.len() - 1];
        let kind = parse_file_name(file).map_err(|r| match r {
            NameError::NotDms(r) => not_dms(&r),
            NameError::Invalid(r) => invalid(r),
        })?;
        let partition = if middle.is_empty() {
            None
        } else {
            let joined = middle.join("/");
            let is_load = matches!(kind, DmsFileKind::Load { .. });
            let load_partition = is_load && middle.len() == 1;
            if !(is_date_partition(&joined) || load_partition) {
                return Err(invalid(format!(
                    "folders {joined:?} between table and file are neither a date partition nor a load partition"
                )));
            }
            Some(joined)
        };
        Ok(DmsPath {
            key: key.to_owned(),
            schema: segments[0].to_owned(),
            table: segments[1].to_owned(),
            partition,
            file: file.to_owned(),
            kind,
        })
    }

    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The file's place in its table's order as 20 decimal digits: full-load files first (by
    /// segment, then counter), then CDC files by the time in their name.
    pub fn ordinal(&self) -> String {
        match &self.kind {
            DmsFileKind::Load { segment, counter } => {
                format!("0{:09}{:010}", segment, counter)
            }
            DmsFileKind::Cdc { stamp, .. } => format!("1{stamp:019}"),
        }
    }

    /// Whether this is a full-load file.
    pub fn is_full_load(&self) -> bool {
        matches!(self.kind, DmsFileKind::Load { .. })
    }
}

impl PartialOrd for DmsPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DmsPath {
    /// DMS order: by table, then full-load files (segment, counter, partition), then CDC files
    /// by name time. The key breaks remaining ties so the order is total.
    fn cmp(&self, other: &Self) -> Ordering {
        (
            &self.schema,
            &self.table,
            self.ordinal(),
            &self.partition,
            &self.key,
        )
            .cmp(&(
                &other.schema,
                &other.table,
                other.ordinal(),
                &other.partition,
                &other.key,
            ))
    }
}

enum NameError {
    NotDms(String),
    Invalid(String),
}

fn parse_file_name(file: &str) -> Result<DmsFileKind, NameError> {
    let Some(stem) = file.strip_suffix(".parquet") else {
        let reason = if file.contains(".csv") {
            "a CSV file; only DataFormat=parquet is read"
        } else {
            "not a .parquet file"
        };
        return Err(NameError::NotDms(reason.into()));
    };
    // Full load: [SEGMENT<n>_]LOAD<hex>.
    let (segment, load) = match stem.strip_prefix("SEGMENT") {
        Some(rest) => {
            let (n, load) = rest
                .split_once('_')
                .ok_or_else(|| NameError::Invalid(format!("{file}: SEGMENT without `_LOAD…`")))?;
            let n: u32 = n
                .parse()
                .ok()
                .filter(|_| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    NameError::Invalid(format!("{file}: segment {n:?} is not a number"))
                })?;
            (n, Some(load))
        }
        None => (0, stem.starts_with("LOAD").then_some(stem)),
    };
    if let Some(load) = load {
        let hex = load.strip_prefix("LOAD").ok_or_else(|| {
            NameError::Invalid(format!("{file}: expected LOAD after the segment"))
        })?;
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NameError::Invalid(format!(
                "{file}: the LOAD counter {hex:?} is not hexadecimal"
            )));
        }
        let counter = u64::from_str_radix(hex, 16)
            .map_err(|e| NameError::Invalid(format!("{file}: LOAD counter: {e}")))?;
        return Ok(DmsFileKind::Load { segment, counter });
    }
    // CDC: yyyyMMdd-HHmmssSSS (9 digits) or yyyyMMdd-HHmmssSSSS (10 digits).
    let Some((date, time)) = stem.split_once('-') else {
        return Err(NameError::NotDms(
            "neither LOAD<counter> nor yyyyMMdd-HHmmssSSS".into(),
        ));
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if date.len() != 8 || !digits(date) || !(time.len() == 9 || time.len() == 10) || !digits(time) {
        return Err(NameError::NotDms(
            "neither LOAD<counter> nor yyyyMMdd-HHmmssSSS".into(),
        ));
    }
    let num = |s: &str| s.parse::<u32>().unwrap_or(u32::MAX);
    let day = NaiveDate::from_ymd_opt(num(&date[0..4]) as i32, num(&date[4..6]), num(&date[6..8]))
        .ok_or_else(|| NameError::Invalid(format!("{file}: {date} is not a date")))?;
    let frac4 = if time.len() == 9 {
        format!("{}0", &time[6..9])
    } else {
        time[6..10].to_owned()
    };
    let at = day
        .and_hms_micro_opt(
            num(&time[0..2]),
            num(&time[2..4]),
            num(&time[4..6]),
            num(&frac4) * 100,
        )
        .ok_or_else(|| NameError::Invalid(format!("{file}: {time} is not a time of day")))?
        .and_utc();
    let stamp = format!("{date}{}{frac4}", &time[0..6])
        .parse::<u64>()
        .map_err(|e| NameError::Invalid(format!("{file}: {e}")))?;
    Ok(DmsFileKind::Cdc { stamp, at })
}

/// Whether folders are a DMS date partition: digit groups with one delimiter kind
/// (`/`, `-`, `_` or none) making 6 (YYYYMM), 8 (YYYYMMDD, MMYYYYDD, DDMMYYYY) or 10
/// (YYYYMMDDHH) digits.
fn is_date_partition(folders: &str) -> bool {
    let delimiters: Vec<char> = folders.chars().filter(|c| !c.is_ascii_digit()).collect();
    if delimiters.iter().any(|c| !matches!(c, '/' | '-' | '_')) {
        return false;
    }
    if delimiters.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let groups: Vec<&str> = folders.split(['/', '-', '_']).collect();
    if groups
        .iter()
        .any(|g| g.is_empty() || !(g.len() == 2 || g.len() == 4 || groups.len() == 1))
    {
        return false;
    }
    matches!(
        folders.chars().filter(char::is_ascii_digit).count(),
        6 | 8 | 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(key: &str) -> (u32, u64) {
        match DmsPath::parse(key, "").unwrap().kind {
            DmsFileKind::Load { segment, counter } => (segment, counter),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn load_counters_are_hexadecimal_and_order_numerically() {
        assert_eq!(load("s/t/LOAD00000001.parquet"), (0, 1));
        assert_eq!(load("s/t/LOAD0000000A.parquet"), (0, 10));
        assert_eq!(load("s/t/LOAD00000010.parquet"), (0, 16));
        assert_eq!(load("s/t/LOAD00001.parquet"), (0, 1));
        assert_eq!(load("s/t/SEGMENT3_LOAD00000002.parquet"), (3, 2));
        let mut keys: Vec<DmsPath> = [
            "s/t/LOAD00000010.parquet",
            "s/t/LOAD0000000A.parquet",
            "s/t/20240101-000000000.parquet",
            "s/t/LOAD00000009.parquet",
        ]
        .iter()
        .map(|k| DmsPath::parse(k, "").unwrap())
        .collect();
        keys.sort();
        let names: Vec<&str> = keys.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            names,
            [
                "LOAD00000009.parquet",
                "LOAD0000000A.parquet",
                "LOAD00000010.parquet",
                "20240101-000000000.parquet"
            ]
        );
        // Lexical order would have put 0A after 10 (it does not: it is numeric).
        assert!(keys[1].ordinal() < keys[2].ordinal());
    }

    #[test]
    fn cdc_names_with_9_or_10_digits() {
        let p = DmsPath::parse("dms/public/patients/20221023-013830913.parquet", "dms").unwrap();
        assert_eq!(
            (p.schema.as_str(), p.table.as_str()),
            ("public", "patients")
        );
        let DmsFileKind::Cdc { stamp, at } = p.kind else {
            panic!()
        };
        assert_eq!(stamp, 202210230138309130);
        assert_eq!(at.to_rfc3339(), "2022-10-23T01:38:30.913+00:00");
        let ten = DmsPath::parse("s/t/20141029-1134010000.parquet", "").unwrap();
        let DmsFileKind::Cdc { stamp, .. } = ten.kind else {
            panic!()
        };
        assert_eq!(stamp, 201410291134010000);
        // 9 and 10 digit names order by time together.
        let a = DmsPath::parse("s/t/20240101-120000001.parquet", "").unwrap();
        let b = DmsPath::parse("s/t/20240101-1200000015.parquet", "").unwrap();
        assert!(a < b && a.ordinal() < b.ordinal());
        assert!(matches!(
            DmsPath::parse("s/t/20241399-120000001.parquet", ""),
            Err(PathError::Invalid { .. })
        ));
        assert!(matches!(
            DmsPath::parse("s/t/20240101-250000001.parquet", ""),
            Err(PathError::Invalid { .. })
        ));
    }

    #[test]
    fn date_partition_folders_of_every_form() {
        for folders in [
            "2024/04/27",
            "2024-04-27",
            "2024_04_27",
            "20240427",
            "2024/04/27/13",
            "2024042713",
            "2024/04",
            "202404",
            "04/2024/27",
            "27/04/2024",
            "27-04-2024",
        ] {
            let key = format!("pre/fix/s/t/{folders}/20240427-015434214.parquet");
            let p = DmsPath::parse(&key, "pre/fix/").unwrap_or_else(|e| panic!("{folders}: {e}"));
            assert_eq!(p.partition.as_deref(), Some(folders));
            assert_eq!(p.table, "t");
        }
        for bad in ["2024/4/27", "2024-04/27", "abc", "2024/04/27/13/00"] {
            let key = format!("s/t/{bad}/20240427-015434214.parquet");
            assert!(DmsPath::parse(&key, "").is_err(), "{bad}");
        }
        // A parallel-load partition folder before a LOAD file.
        let p = DmsPath::parse("s/t/part_2023/LOAD00000001.parquet", "").unwrap();
        assert_eq!(p.partition.as_deref(), Some("part_2023"));
    }

    #[test]
    fn other_files_are_not_dms_files() {
        for key in [
            "s/t/_expected_final.csv",
            "s/t/LOAD00000001.csv",
            "s/t/LOAD00000001.csv.gz",
            "s/t/notes.txt",
            "s/t/readme.parquet",
            "s/LOAD00000001.parquet",
            "other/s/t/LOAD00000001.parquet",
        ] {
            let prefix = if key.starts_with("other") { "dms" } else { "" };
            assert!(
                matches!(
                    DmsPath::parse(key, prefix),
                    Err(PathError::NotADmsFile { .. })
                ),
                "{key}"
            );
        }
        assert!(matches!(
            DmsPath::parse("s/t/LOADXYZ.parquet", ""),
            Err(PathError::Invalid { .. })
        ));
        assert!(matches!(
            DmsPath::parse("s/t/SEGMENTx_LOAD00000001.parquet", ""),
            Err(PathError::Invalid { .. })
        ));
    }
}
