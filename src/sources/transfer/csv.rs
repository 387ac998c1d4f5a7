//! Delimited text (CSV, pipe- or tab-separated), record by record, with recovery from broken
//! quoting.
//!
//! Lines are read one at a time and gathered into a record while a quoted field is open (an
//! odd number of quote characters so far: a doubled quote inside quotes counts two, so the
//! parity is exact). A complete record is split by `csv-core`, with no copy of the file.
//!
//! A quote that never closes would swallow the rest of the file into one field. So a record
//! still open after `max_record_lines` lines or at the end of the file, or one that spans
//! lines and has the wrong number of fields, is taken as broken quoting: its *first* line is
//! refused (naming row and line) and reading goes on at the line after it. A row with the
//! wrong number of fields, or a field that is not UTF-8, is refused with its row and line.
//! Empty fields are `null`.

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::sync::Arc;

use serde_json::Value;

use super::format::CsvFormat;
use super::row::{Broken, Row, not_utf8, read_line, strip_bom, trim_eol};
use crate::model::{Cells, Columns};

/// Splits one complete record into fields (byte ranges of `out`).
struct Splitter {
    core: csv_core::Reader,
    delimiter: u8,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl Splitter {
    fn new(fmt: &CsvFormat) -> Self {
        let delimiter = fmt.delimiter.as_bytes().first().copied().unwrap_or(b',');
        let mut b = csv_core::ReaderBuilder::new();
        b.delimiter(delimiter);
        match fmt.quote.as_deref().and_then(|q| q.as_bytes().first()) {
            Some(q) => {
                b.quote(*q);
            }
            None => {
                b.quoting(false);
            }
        }
        Splitter {
            core: b.build(),
            delimiter,
            out: vec![0; 4096],
            ends: vec![0; 64],
        }
    }

    /// Splits `record` (complete, ending in a newline); returns the number of fields.
    fn split(&mut self, record: &[u8]) -> usize {
        self.core.reset();
        let (mut input, mut out_len, mut n_ends) = (record, 0usize, 0usize);
        loop {
            let (res, nin, nout, nend) =
                self.core
                    .read_record(input, &mut self.out[out_len..], &mut self.ends[n_ends..]);
            input = &input[nin..];
            out_len += nout;
            n_ends += nend;
            match res {
                csv_core::ReadRecordResult::OutputFull => {
                    let l = self.out.len();
                    self.out.resize(l * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let l = self.ends.len();
                    self.ends.resize(l * 2, 0);
                }
                csv_core::ReadRecordResult::InputEmpty => {
                    if input.is_empty() {
                        // End of the record's bytes: a final call closes it.
                        let (_, _, _, nend) = self.core.read_record(
                            &[],
                            &mut self.out[out_len..],
                            &mut self.ends[n_ends..],
                        );
                        return n_ends + nend;
                    }
                }
                csv_core::ReadRecordResult::Record | csv_core::ReadRecordResult::End => {
                    return n_ends;
                }
            }
        }
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }
}

/// A physical line with its number (from 1).
struct Line {
    no: u64,
    bytes: Vec<u8>,
}

/// Reads a delimited file, handing each row to `emit`.
pub fn read(
    input: &mut dyn BufRead,
    fmt: &CsvFormat,
    emit: &mut dyn FnMut(Row),
) -> Result<(), Broken> {
    for r in CsvRows::new(input, fmt) {
        emit(r?);
    }
    Ok(())
}

/// The rows of a delimited file, pulled one at a time (what [`read`] hands on). After a
/// [`Broken`] read error, nothing more comes.
pub struct CsvRows<R> {
    input: R,
    fmt: CsvFormat,
    quote: Option<u8>,
    max_lines: usize,
    splitter: Splitter,
    header: Option<Vec<String>>,
    /// The header's column indexes in the order of their names, so a record's map is built
    /// from its cells already sorted (one pass) rather than by a search per cell.
    order: Vec<usize>,
    /// The header's names in that order, shared by every record of the file.
    shared: Option<Arc<Columns>>,
    /// Lines given back after a broken record, read again before new ones.
    replay: VecDeque<Line>,
    pending: Vec<Line>,
    quotes_open: bool,
    line_no: u64,
    row: u64,
    buf: Vec<u8>,
    record: Vec<u8>,
    /// Rows found and not yet handed on.
    queue: VecDeque<Row>,
    done: bool,
    /// Line buffers of records handed on, reused (a file's lines cost no allocation each).
    spare: Vec<Vec<u8>>,
    /// Leave empty fields out of records rather than making them `null`.
    omit_empty: bool,
}

/// Column indexes ordered by column name (names are distinct: the header is checked).
fn sorted_order(names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(&names[b]));
    order
}

/// The names in `order`, as the columns records share.
fn shared_columns(names: &[String], order: &[usize]) -> Arc<Columns> {
    Columns::sorted(order.iter().map(|&i| names[i].clone()).collect())
}

/// How many line buffers are kept for reuse.
const SPARE_LINES: usize = 8;

/// Gives the lines of a finished record back for reuse.
fn recycle(pending: &mut Vec<Line>, spare: &mut Vec<Vec<u8>>) {
    for l in pending.drain(..) {
        if spare.len() < SPARE_LINES {
            spare.push(l.bytes);
        }
    }
}

impl<R: BufRead> CsvRows<R> {
    pub fn new(input: R, fmt: &CsvFormat) -> Self {
        CsvRows {
            input,
            quote: fmt
                .quote
                .as_deref()
                .and_then(|q| q.as_bytes().first().copied()),
            max_lines: fmt.max_record_lines.max(1),
            splitter: Splitter::new(fmt),
            header: if fmt.header {
                None
            } else {
                Some(fmt.columns.clone())
            },
            order: if fmt.header {
                Vec::new()
            } else {
                sorted_order(&fmt.columns)
            },
            shared: (!fmt.header)
                .then(|| shared_columns(&fmt.columns, &sorted_order(&fmt.columns))),
            fmt: fmt.clone(),
            replay: VecDeque::new(),
            pending: Vec::new(),
            quotes_open: false,
            line_no: 0,
            row: 0,
            buf: Vec::new(),
            record: Vec::new(),
            queue: VecDeque::new(),
            done: false,
            spare: Vec::new(),
            omit_empty: false,
        }
    }

    /// Leaves empty fields out of records (instead of `null` values).
    pub fn omit_empty(mut self) -> Self {
        self.omit_empty = true;
        self
    }

    /// The column names, once the header has been read (or configured).
    pub fn columns(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// Reads until at least one row is queued or the file ends.
    fn fill(&mut self) -> Result<(), Broken> {
        let CsvRows {
            input,
            fmt,
            quote,
            max_lines,
            splitter,
            header,
            order,
            shared,
            replay,
            pending,
            quotes_open,
            line_no,
            row,
            buf,
            record,
            queue,
            done,
            spare,
            omit_empty,
        } = self;
        let (quote, max_lines) = (*quote, *max_lines);
        loop {
            if !queue.is_empty() {
                return Ok(());
            }
            let next = match replay.pop_front() {
                Some(l) => Some(l),
                None => {
                    let place =
                        |row: u64, line: u64| format!("row {} (line {})", row + 1, line + 1);
                    match read_line(input, buf) {
                        Ok(true) => {
                            *line_no += 1;
                            let mut bytes = std::mem::replace(buf, spare.pop().unwrap_or_default());
                            if *line_no == 1 {
                                bytes = strip_bom(&bytes).to_vec();
                            }
                            Some(Line {
                                no: *line_no,
                                bytes,
                            })
                        }
                        Ok(false) => None,
                        Err(e) => {
                            let at = pending.first().map_or(*line_no, |l| l.no - 1);
                            return Err(Broken::new(*row + 1, place(*row, at), e));
                        }
                    }
                }
            };
            let Some(line) = next else {
                if pending.is_empty() {
                    *done = true;
                    return Ok(());
                }
                // The end of the file with a quote still open.
                refuse_first(
                    pending,
                    replay,
                    row,
                    "broken quoting: a quoted field opened here is never closed",
                    &mut |r| queue.push_back(r),
                );
                *quotes_open = false;
                continue;
            };
            if pending.is_empty() && trim_eol(&line.bytes).is_empty() {
                if spare.len() < SPARE_LINES {
                    spare.push(line.bytes);
                }
                continue; // blank line
            }
            // `contains` is a memchr: most lines have no quote, and are not counted.
            if let Some(q) = quote
                && line.bytes.contains(&q)
                && line.bytes.iter().filter(|b| **b == q).count() % 2 == 1
            {
                *quotes_open = !*quotes_open;
            }
            pending.push(line);
            if *quotes_open {
                if pending.len() >= max_lines {
                    refuse_first(
                        pending,
                        replay,
                        row,
                        &format!(
                            "broken quoting: a quoted field opened here is still open {max_lines} lines later"
                        ),
                        &mut |r| queue.push_back(r),
                    );
                    *quotes_open = false;
                }
                continue;
            }
            // A complete record. A record of one line ending in a newline (nearly all) is split
            // where it lies; others are gathered first.
            let n = match pending.as_slice() {
                [only] if only.bytes.ends_with(b"\n") => splitter.split(&only.bytes),
                _ => {
                    record.clear();
                    for l in pending.iter() {
                        record.extend_from_slice(&l.bytes);
                    }
                    if !record.ends_with(b"\n") {
                        record.push(b'\n');
                    }
                    splitter.split(record)
                }
            };
            // A record over several lines must be strictly quoted (a closing quote followed by a
            // delimiter or the end of the line) and have the header's width: otherwise a stray
            // quote has glued lines together.
            if pending.len() > 1
                && (quote.is_some_and(|q| !strictly_quoted(record, q, splitter.delimiter))
                    || header.as_ref().is_some_and(|names| n != names.len()))
            {
                refuse_first(
                    pending,
                    replay,
                    row,
                    "broken quoting: a quoted field opened here runs into the next lines",
                    &mut |r| queue.push_back(r),
                );
                continue;
            }
            let first_line = pending.first().map_or(0, |l| l.no);
            let Some(names) = &*header else {
                // The header row.
                let mut names = Vec::with_capacity(n);
                for i in 0..n {
                    match std::str::from_utf8(splitter.field(i)) {
                        Ok(s) => names.push(s.trim().to_owned()),
                        Err(_) => {
                            queue.push_back(bad_header(first_line, &not_utf8("the header")));
                            *done = true;
                            return Ok(());
                        }
                    }
                }
                let mut seen = HashSet::new();
                if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                    queue.push_back(bad_header(
                        first_line,
                        &format!("column {dup:?} appears twice in the header"),
                    ));
                    *done = true;
                    return Ok(());
                }
                if let Some(blank) = names.iter().position(String::is_empty) {
                    queue.push_back(bad_header(
                        first_line,
                        &format!("column {} of the header has no name", blank + 1),
                    ));
                    *done = true;
                    return Ok(());
                }
                if !fmt.columns.is_empty() && fmt.columns != names {
                    queue.push_back(bad_header(
                        first_line,
                        &format!(
                            "the header {names:?} is not the configured columns {:?}",
                            fmt.columns
                        ),
                    ));
                    *done = true;
                    return Ok(());
                }
                *order = sorted_order(&names);
                *shared = Some(shared_columns(&names, order));
                *header = Some(names);
                recycle(pending, spare);
                continue;
            };
            if n != names.len() {
                *row += 1;
                queue.push_back(Row::Bad {
                    row: *row,
                    place: format!("row {} (line {first_line})", *row),
                    message: format!("{n} fields, but the header has {}", names.len()),
                });
                recycle(pending, spare);
                continue;
            }
            *row += 1;
            let mut cells = Vec::with_capacity(names.len());
            let mut bad = None;
            for &i in order.iter() {
                let raw = splitter.field(i);
                let value = if raw.is_empty() {
                    (!*omit_empty).then_some(Value::Null)
                } else {
                    match std::str::from_utf8(raw) {
                        Ok(s) => Some(Value::String(s.to_owned())),
                        Err(_) => {
                            // The first bad column in the file's order, as people read it.
                            let first = (0..names.len())
                                .find(|&j| std::str::from_utf8(splitter.field(j)).is_err())
                                .unwrap_or(i);
                            bad = Some(not_utf8(&format!("column {:?}", names[first])));
                            break;
                        }
                    }
                };
                cells.push(value);
            }
            queue.push_back(match (bad, &*shared) {
                // The cells are in name order, the order of the shared columns.
                (None, Some(columns)) => Row::Record {
                    row: *row,
                    fields: Cells::new(Arc::clone(columns), cells).into(),
                },
                // Not reached: the columns are set with the header.
                (None, None) => Row::Bad {
                    row: *row,
                    place: format!("row {} (line {first_line})", *row),
                    message: "no header".to_owned(),
                },
                (Some(message), _) => Row::Bad {
                    row: *row,
                    place: format!("row {} (line {first_line})", *row),
                    message,
                },
            });
            recycle(pending, spare);
        }
    }
}

impl<R> std::fmt::Debug for CsvRows<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvRows")
            .field("line", &self.line_no)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl<R: BufRead> Iterator for CsvRows<R> {
    type Item = Result<Row, Broken>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            if let Err(b) = self.fill() {
                self.done = true;
                return Some(Err(b));
            }
        }
    }
}

/// Whether every quoted field of `record` opens at the start of its field and closes right
/// before a delimiter or the end of a line (RFC 4180).
fn strictly_quoted(record: &[u8], quote: u8, delimiter: u8) -> bool {
    #[derive(PartialEq)]
    enum S {
        FieldStart,
        Unquoted,
        Quoted,
        AfterQuote,
    }
    let mut state = S::FieldStart;
    for &b in record {
        state = match state {
            S::FieldStart if b == quote => S::Quoted,
            S::FieldStart | S::Unquoted => {
                if b == delimiter || b == b'\n' || b == b'\r' {
                    S::FieldStart
                } else if b == quote {
                    return false;
                } else {
                    S::Unquoted
                }
            }
            S::Quoted if b == quote => S::AfterQuote,
            S::Quoted => S::Quoted,
            // A doubled quote inside quotes.
            S::AfterQuote if b == quote => S::Quoted,
            S::AfterQuote if b == delimiter || b == b'\n' || b == b'\r' => S::FieldStart,
            S::AfterQuote => return false,
        };
    }
    state != S::Quoted
}

fn bad_header(line: u64, message: &str) -> Row {
    Row::Bad {
        row: 0,
        place: format!("header (line {line})"),
        message: format!("{message}; no row of the file was read"),
    }
}

/// Refuses the first pending line as a row and gives the others back to be read again.
fn refuse_first(
    pending: &mut Vec<Line>,
    replay: &mut VecDeque<Line>,
    row: &mut u64,
    message: &str,
    emit: &mut dyn FnMut(Row),
) {
    let mut lines = std::mem::take(pending).into_iter();
    let Some(first) = lines.next() else { return };
    *row += 1;
    emit(Row::Bad {
        row: *row,
        place: format!("row {} (line {})", *row, first.no),
        message: message.to_owned(),
    });
    // Keep file order: these come before anything already waiting.
    for l in lines.rev() {
        replay.push_front(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &[u8], fmt: &CsvFormat) -> (Vec<Row>, Option<Broken>) {
        let mut out = Vec::new();
        let r = read(&mut &text[..], fmt, &mut |r| out.push(r));
        (out, r.err())
    }

    fn record(r: &Row) -> serde_json::Map<String, Value> {
        match r {
            Row::Record { fields, .. } => match fields.to_value() {
                Value::Object(m) => m,
                other => panic!("not an object: {other}"),
            },
            Row::Bad { place, message, .. } => panic!("{place}: {message}"),
        }
    }

    fn bad(r: &Row) -> (&str, &str) {
        match r {
            Row::Bad { place, message, .. } => (place, message),
            Row::Record { row, .. } => panic!("row {row} is a record"),
        }
    }

    #[test]
    fn records_are_the_same_with_reused_line_buffers_and_empty_fields_omitted() {
        // Columns out of name order, many lines (line buffers are reused), a blank line, a
        // field over two lines, a bad row in the middle.
        let mut text = String::from("zeta,alpha,mid\n");
        for i in 0..40 {
            text.push_str(&format!("z{i},a{i},\n"));
            if i == 10 {
                text.push_str("\nonly,two\n\"x\ny\",b,c\n");
            }
        }
        let (all, broken) = rows(text.as_bytes(), &CsvFormat::default());
        assert!(broken.is_none());
        assert_eq!(all.len(), 42);
        assert_eq!(
            record(&all[0]),
            serde_json::json!({"zeta": "z0", "alpha": "a0", "mid": null})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(bad(&all[11]).0, "row 12 (line 14)");
        assert_eq!(record(&all[12])["zeta"], "x\ny");
        assert_eq!(record(&all[41])["alpha"], "a39");
        let omitted: Vec<Row> = CsvRows::new(text.as_bytes(), &CsvFormat::default())
            .omit_empty()
            .map(Result::unwrap)
            .collect();
        assert_eq!(omitted.len(), all.len());
        for (o, a) in omitted.iter().zip(&all) {
            match (o, a) {
                (
                    Row::Record {
                        row: r1,
                        fields: f1,
                    },
                    Row::Record {
                        row: r2,
                        fields: f2,
                    },
                ) => {
                    assert_eq!(r1, r2);
                    let Value::Object(mut kept) = f2.to_value() else {
                        panic!("not an object")
                    };
                    kept.retain(|_, v| !v.is_null());
                    assert_eq!(f1, &Value::Object(kept));
                }
                (o, a) => assert_eq!(o, a),
            }
        }
    }

    #[test]
    fn header_quoting_and_empty_fields() {
        let text = b"\xef\xbb\xbfid,name,note\r\n1,\"Smith, Jo\",\"said \"\"hi\"\"\"\r\n2,Lee,\r\n\r\n3,\"multi\nline\",x\n";
        let (rows, broken) = rows(text, &CsvFormat::default());
        assert!(broken.is_none());
        assert_eq!(rows.len(), 3);
        assert_eq!(record(&rows[0])["name"], "Smith, Jo");
        assert_eq!(record(&rows[0])["note"], "said \"hi\"");
        assert_eq!(record(&rows[1])["note"], Value::Null);
        assert_eq!(record(&rows[2])["name"], "multi\nline");
        assert!(matches!(rows[2], Row::Record { row: 3, .. }));
    }

    #[test]
    fn other_delimiters_no_quoting_and_configured_columns() {
        let fmt = CsvFormat {
            delimiter: "|".into(),
            quote: None,
            header: false,
            columns: vec!["a".into(), "b".into()],
            ..CsvFormat::default()
        };
        let (rows, _) = rows(b"1|\"x\n2|y", &fmt);
        assert_eq!(record(&rows[0])["b"], "\"x");
        assert_eq!(record(&rows[1])["a"], "2");
    }

    #[test]
    fn wrong_field_counts_are_refused_and_reading_goes_on() {
        let (rows, _) = rows(b"a,b\n1,2\n3\n4,5,6\n7,8\n", &CsvFormat::default());
        assert_eq!(rows.len(), 4);
        assert_eq!(
            bad(&rows[1]),
            ("row 2 (line 3)", "1 fields, but the header has 2")
        );
        assert_eq!(bad(&rows[2]).0, "row 3 (line 4)");
        assert_eq!(record(&rows[3])["a"], "7");
    }

    #[test]
    fn a_quote_that_never_closes_costs_one_row() {
        // Row 2 opens a quote that is never closed: without recovery rows 3-5 would vanish
        // into its field.
        let text = b"id,name\n1,Ann\n2,\"Bob\n3,Cy\n4,Di\n5,Ed\n";
        let (rows, _) = rows(text, &CsvFormat::default());
        assert_eq!(rows.len(), 5, "{rows:?}");
        let (place, message) = bad(&rows[1]);
        assert_eq!(place, "row 2 (line 3)");
        assert!(message.contains("broken quoting"), "{message}");
        for (i, id) in [(2, "3"), (3, "4"), (4, "5")] {
            assert_eq!(record(&rows[i])["id"], id);
        }
    }

    #[test]
    fn a_stray_quote_closed_later_costs_one_row() {
        // The quote opened on line 3 is "closed" by the stray one on line 5: the record they
        // make has the wrong field count, so line 3 is refused and 4, 5 are read again.
        let text = b"id,name\n1,Ann\n2,\"Bob\n3,Cy\n4,Di\"x\n5,Ed\n";
        let (rows, _) = rows(text, &CsvFormat::default());
        assert_eq!(bad(&rows[1]).0, "row 2 (line 3)");
        assert_eq!(record(&rows[2])["id"], "3");
        // Line 5 has a stray quote of its own; it ends open at the end of the file.
        let (place, _) = bad(&rows[3]);
        assert_eq!(place, "row 4 (line 5)");
        assert_eq!(record(&rows[4])["id"], "5");
        assert_eq!(rows.len(), 5);
    }

    #[test]
    fn strict_quoting() {
        for (text, ok) in [
            (&b"a,\"b\nc\",d\n"[..], true),
            (b"a,\"b \"\"x\"\"\"\n", true),
            (b"a,\"b\nc\"x,d\n", false),
            (b"a,b\"c\n", false),
            (b"a,\"open\n", false),
        ] {
            assert_eq!(
                strictly_quoted(text, b'"', b','),
                ok,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn the_open_record_limit_bounds_memory() {
        let fmt = CsvFormat {
            max_record_lines: 2,
            ..CsvFormat::default()
        };
        let text = b"id,name\n1,\"open\n2,b\n3,c\n";
        let (rows, _) = rows(text, &fmt);
        assert!(bad(&rows[0]).1.contains("still open 2 lines later"));
        assert_eq!(record(&rows[1])["id"], "2");
        assert_eq!(record(&rows[2])["id"], "3");
    }

    #[test]
    fn bytes_that_are_not_utf8_refuse_their_row() {
        let (rows, _) = rows(b"id,name\n1,Jos\xe9\n2,Ann\n", &CsvFormat::default());
        let (place, message) = bad(&rows[0]);
        assert_eq!(place, "row 1 (line 2)");
        assert!(
            message.contains("\"name\"") && message.contains("encoding"),
            "{message}"
        );
        assert_eq!(record(&rows[1])["name"], "Ann");
    }

    #[test]
    fn records_built_in_name_order_equal_cell_by_cell_maps() {
        // Columns far from name order, prefixes of each other, configured or from the header;
        // with two bad cells, the one first in the file is named (not the first by name).
        let header = ["zz", "Z", "a", "ab", "A", "b_", "b", "mid"];
        let text = "zz,Z,a,ab,A,b_,b,mid\n1,2,3,4,5,6,7,8\n,x,,y,,z,,\n";
        let expected = |cells: &[&str]| -> serde_json::Map<String, Value> {
            let mut m = serde_json::Map::new();
            for (name, cell) in header.iter().zip(cells) {
                let v = if cell.is_empty() {
                    Value::Null
                } else {
                    Value::String((*cell).to_owned())
                };
                m.insert((*name).to_owned(), v);
            }
            m
        };
        let configured = CsvFormat {
            header: false,
            columns: header.iter().map(|h| (*h).to_owned()).collect(),
            ..CsvFormat::default()
        };
        let (from_header, _) = rows(text.as_bytes(), &CsvFormat::default());
        let body = text.split_once('\n').map(|(_, b)| b).unwrap();
        let (from_config, _) = rows(body.as_bytes(), &configured);
        for rows in [from_header, from_config] {
            assert_eq!(
                record(&rows[0]),
                expected(&["1", "2", "3", "4", "5", "6", "7", "8"])
            );
            assert_eq!(
                record(&rows[1]),
                expected(&["", "x", "", "y", "", "z", "", ""])
            );
        }
        let (rows, _) = rows(b"zz,a\n\xff,\xfe\n", &CsvFormat::default());
        let (_, message) = bad(&rows[0]);
        assert!(message.starts_with("column \"zz\""), "{message}");
    }

    /// Records equal maps built cell by cell from the cells the file was written from: generated rows with empty cells, quotes, delimiters and
    /// newlines inside quotes, odd dates, non-ASCII text, columns far from name order; with and
    /// without empty cells left out, with the header read or configured.
    #[test]
    fn records_equal_cell_by_cell_maps_on_generated_rows() {
        let names = [
            "Id",
            "BIRTHDATE",
            "zeta",
            "DEATHDATE",
            "a",
            "SSN",
            "A",
            "ab",
            "FIRST",
            "mid",
            "_x",
            "Z9",
            "b",
        ];
        let cells = [
            "",
            "",
            "",
            "2020-02-30",
            "0000-00-00",
            "19-7-1",
            "x",
            "Ann",
            "ÉLodie",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            " ",
            "  padded ",
            "\u{a0}",
            "日本",
            "-71.25",
            "\"",
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        let mut text = names.join(",");
        text.push('\n');
        let mut expected = Vec::new();
        for _ in 0..400 {
            let row: Vec<&str> = names
                .iter()
                .map(|_| cells[rng.usize(..cells.len())])
                .collect();
            let line: Vec<String> = row
                .iter()
                .map(|c| {
                    if c.contains([',', '"', '\n']) || (c.is_empty() && rng.bool()) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        (*c).to_owned()
                    }
                })
                .collect();
            text.push_str(&line.join(","));
            text.push('\n');
            expected.push(row);
        }
        let by_cell = |row: &[&str], omit: bool| {
            let mut m = serde_json::Map::new();
            for (name, cell) in names.iter().zip(row) {
                if cell.is_empty() {
                    if !omit {
                        m.insert((*name).to_owned(), Value::Null);
                    }
                } else {
                    m.insert((*name).to_owned(), Value::String((*cell).to_owned()));
                }
            }
            m
        };
        let configured = CsvFormat {
            header: false,
            columns: names.iter().map(|n| (*n).to_owned()).collect(),
            ..CsvFormat::default()
        };
        let body = text.split_once('\n').map(|(_, b)| b).unwrap();
        for omit in [false, true] {
            for (fmt, input) in [
                (CsvFormat::default(), &text[..]),
                (configured.clone(), body),
            ] {
                let mut reader = CsvRows::new(input.as_bytes(), &fmt);
                if omit {
                    reader = reader.omit_empty();
                }
                let got: Vec<Row> = reader.map(Result::unwrap).collect();
                assert_eq!(got.len(), expected.len());
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    assert_eq!(record(g), by_cell(e, omit), "row {i}, omit {omit}");
                }
            }
        }
    }

    #[test]
    fn bad_headers_stop_the_file_with_a_reason() {
        for (text, want) in [
            (&b"id,id\n1,2\n"[..], "twice"),
            (&b"id,\n1,2\n"[..], "no name"),
            (&b"i\xffd\n1\n"[..], "UTF-8"),
        ] {
            let (rows, _) = rows(text, &CsvFormat::default());
            assert_eq!(rows.len(), 1);
            assert!(bad(&rows[0]).1.contains(want), "{rows:?}");
        }
        let fmt = CsvFormat {
            columns: vec!["x".into()],
            ..CsvFormat::default()
        };
        let (rows, _) = rows(b"id\n1\n", &fmt);
        assert!(bad(&rows[0]).1.contains("configured columns"));
    }

    #[test]
    fn a_read_error_stops_with_the_row_it_was_reading() {
        struct Failing<'a>(&'a [u8]);
        impl std::io::Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "corrupt deflate stream",
                    ));
                }
                let n = self.0.len().min(buf.len()).min(5);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut input = std::io::BufReader::new(Failing(b"id,n\n1,a\n2,b\n3,c"));
        let mut out = Vec::new();
        let broken = read(&mut input, &CsvFormat::default(), &mut |r| out.push(r)).unwrap_err();
        assert_eq!(out.len(), 2);
        assert_eq!(broken.place, "row 3 (line 4)");
        assert!(
            broken.message().contains("truncated"),
            "{}",
            broken.message()
        );
    }
}
