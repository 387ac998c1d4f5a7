//! XML: every element at the configured path (`Members/Member`, from the root element) is
//! one record, read as the file streams by (`quick-xml`), never the whole document.
//!
//! A record becomes a JSON object: its attributes and child elements by local name (a
//! leaf's text as a string, a nested element as an object, a repeated one as an array; text
//! next to children under `#text`); empty leaves are `null`. A record that is malformed (an
//! end tag that does not match, a bad attribute, an unknown entity, a syntax error) is
//! refused naming the record and the byte where it went wrong; reading goes on after it
//! when the parser can, else the rest of the file is refused in one error saying so.

use std::io::BufRead;

use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value};

use super::format::XmlFormat;
use super::row::{Broken, Row};

/// An element being built.
#[derive(Debug, Default)]
struct Node {
    name: String,
    map: Map<String, Value>,
    text: String,
}

impl Node {
    fn start(e: &BytesStart<'_>) -> Result<Node, String> {
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let mut node = Node {
            name,
            ..Node::default()
        };
        for a in e.attributes() {
            let a = a.map_err(|e| format!("bad attribute: {e}"))?;
            let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
            let value = a
                .unescape_value()
                .map_err(|e| format!("attribute {key:?}: {e}"))?;
            insert(&mut node.map, key, Value::String(value.into_owned()));
        }
        Ok(node)
    }

    fn value(self) -> Value {
        let text = self.text.trim();
        if self.map.is_empty() {
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text.to_owned())
            }
        } else {
            let mut map = self.map;
            if !text.is_empty() {
                map.insert("#text".into(), Value::String(text.to_owned()));
            }
            Value::Object(map)
        }
    }
}

/// Adds a child; a repeated name becomes an array.
fn insert(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

/// A record being read.
#[derive(Debug)]
struct Record {
    /// Open elements inside the record (the record element first).
    nodes: Vec<Node>,
    /// The first thing wrong with it.
    error: Option<String>,
    /// Depth of the record element in the document (1 = root).
    depth: usize,
}

pub fn read(
    input: &mut dyn BufRead,
    fmt: &XmlFormat,
    emit: &mut dyn FnMut(Row),
) -> Result<(), Broken> {
    let path: Vec<&[u8]> = fmt.record.split('/').map(str::as_bytes).collect();
    let mut reader = quick_xml::Reader::from_reader(input);
    // End tags are checked here, so a mismatch costs one record, not the rest of the file.
    reader.config_mut().check_end_names = false;
    let mut buf = Vec::new();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut record: Option<Record> = None;
    let mut row = 0u64;
    let mut last_error_at: Option<u64> = None;
    let place = |row: u64, at: u64| format!("record {row} (byte {at})");
    loop {
        let at = reader.buffer_position();
        let event = reader.read_event_into(&mut buf);
        match event {
            Ok(Event::Start(e)) => {
                let name = e.local_name().as_ref().to_vec();
                stack.push(name);
                open(&e, &stack, &path, &mut record, &mut row);
            }
            Ok(Event::Empty(e)) => {
                let name = e.local_name().as_ref().to_vec();
                stack.push(name);
                open(&e, &stack, &path, &mut record, &mut row);
                close(&mut stack, &mut record, row, at, emit);
            }
            Ok(Event::End(e)) => {
                let name = e.local_name().as_ref().to_vec();
                if stack.last() != Some(&name) {
                    let message = format!(
                        "end tag </{}> does not match <{}>",
                        String::from_utf8_lossy(&name),
                        stack
                            .last()
                            .map(|n| String::from_utf8_lossy(n).into_owned())
                            .unwrap_or_default()
                    );
                    match record.as_mut() {
                        Some(r) => {
                            r.error.get_or_insert(format!("byte {at}: {message}"));
                        }
                        None => emit(Row::Bad {
                            row: 0,
                            place: format!("byte {at}"),
                            message,
                        }),
                    }
                    // Close up to the element this end tag names, if it is open at all.
                    if let Some(i) = stack.iter().rposition(|n| *n == name) {
                        while stack.len() > i + 1 {
                            close(&mut stack, &mut record, row, at, emit);
                        }
                    } else {
                        continue;
                    }
                }
                close(&mut stack, &mut record, row, at, emit);
            }
            Ok(Event::Text(t)) => {
                if let Some(node) = record.as_mut().and_then(|r| r.nodes.last_mut()) {
                    match t.decode() {
                        Ok(s) => node.text.push_str(&s),
                        Err(e) => {
                            if let Some(r) = record.as_mut() {
                                r.error.get_or_insert(format!("byte {at}: {e}"));
                            }
                        }
                    }
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(node) = record.as_mut().and_then(|r| r.nodes.last_mut()) {
                    node.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some(rec) = record.as_mut() {
                    let name = String::from_utf8_lossy(&r).into_owned();
                    let resolved = if r.is_char_ref() {
                        r.resolve_char_ref().ok().flatten()
                    } else {
                        match name.as_str() {
                            "amp" => Some('&'),
                            "lt" => Some('<'),
                            "gt" => Some('>'),
                            "quot" => Some('"'),
                            "apos" => Some('\''),
                            _ => None,
                        }
                    };
                    match (resolved, rec.nodes.last_mut()) {
                        (Some(c), Some(node)) => node.text.push(c),
                        _ => {
                            rec.error
                                .get_or_insert(format!("byte {at}: unknown entity &{name};"));
                        }
                    }
                }
            }
            Ok(Event::Eof) => {
                if let Some(r) = record.take() {
                    emit(Row::Bad {
                        row,
                        place: place(row, at),
                        message: format!(
                            "the file ends inside this record{}",
                            r.error.map(|e| format!(" ({e})")).unwrap_or_default()
                        ),
                    });
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(quick_xml::Error::Io(e)) => {
                return Err(Broken::new(
                    row + 1,
                    place(row + 1, at),
                    std::io::Error::new(e.kind(), e.to_string()),
                ));
            }
            Err(e) => {
                let err_at = reader.error_position();
                let message = format!("byte {err_at}: {e}");
                if last_error_at == Some(reader.buffer_position()) {
                    // No progress since the last error: the parser cannot go on.
                    emit(Row::Bad {
                        row: row + 1,
                        place: format!("byte {err_at}"),
                        message: format!(
                            "{message}; the XML cannot be read past this point, the rest of the file is refused"
                        ),
                    });
                    return Ok(());
                }
                last_error_at = Some(reader.buffer_position());
                match record.as_mut() {
                    Some(r) => {
                        r.error.get_or_insert(message);
                    }
                    None => emit(Row::Bad {
                        row: 0,
                        place: format!("byte {err_at}"),
                        message,
                    }),
                }
            }
        }
        buf.clear();
    }
}

/// A start tag: a new record at the record path, or a child of the open record.
fn open(
    e: &BytesStart<'_>,
    stack: &[Vec<u8>],
    path: &[&[u8]],
    record: &mut Option<Record>,
    row: &mut u64,
) {
    match record {
        Some(r) => match Node::start(e) {
            Ok(n) => r.nodes.push(n),
            Err(m) => {
                r.error.get_or_insert(m);
                r.nodes.push(Node::default());
            }
        },
        None => {
            if stack.len() == path.len() && stack.iter().zip(path).all(|(a, b)| a == b) {
                *row += 1;
                let (node, error) = match Node::start(e) {
                    Ok(n) => (n, None),
                    Err(m) => (Node::default(), Some(m)),
                };
                *record = Some(Record {
                    nodes: vec![node],
                    error,
                    depth: stack.len(),
                });
            }
        }
    }
}

/// An element ends: folded into its parent, or the record is done.
fn close(
    stack: &mut Vec<Vec<u8>>,
    record: &mut Option<Record>,
    row: u64,
    at: u64,
    emit: &mut dyn FnMut(Row),
) {
    let depth = stack.len();
    stack.pop();
    let Some(r) = record.as_mut() else { return };
    if depth < r.depth {
        return;
    }
    let Some(node) = r.nodes.pop() else { return };
    if let Some(parent) = r.nodes.last_mut() {
        let name = node.name.clone();
        insert(&mut parent.map, name, node.value());
        return;
    }
    // The record element itself.
    let done = record.take();
    let Some(done) = done else { return };
    emit(match done.error {
        Some(message) => Row::Bad {
            row,
            place: format!("record {row} (byte {at})"),
            message,
        },
        None => Row::Record {
            row,
            fields: match node.value() {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                text => Map::from_iter([("#text".to_owned(), text)]),
            }
            .into(),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, record: &str) -> Vec<Row> {
        let fmt = XmlFormat {
            record: record.into(),
            encoding: Default::default(),
        };
        let mut out = Vec::new();
        read(&mut text.as_bytes(), &fmt, &mut |r| out.push(r)).unwrap();
        out
    }

    fn fields(r: &Row) -> Map<String, Value> {
        match r {
            Row::Record { fields, .. } => match fields.to_value() {
                Value::Object(m) => m,
                other => panic!("not an object: {other}"),
            },
            Row::Bad { place, message, .. } => panic!("{place}: {message}"),
        }
    }

    #[test]
    fn records_at_the_path_become_objects() {
        let text = r#"<?xml version="1.0"?>
<Export><Header><Member>not a record</Member></Header>
<Members>
  <Member id="1"><Name><Family>O&apos;Brien</Family><Given>Ann</Given><Given>Marie</Given></Name>
    <Dob>1980-01-02</Dob><Note/><Memo><![CDATA[a < b]]></Memo></Member>
  <ns:Member xmlns:ns="urn:x" id="2"><Dob>1979-12-31</Dob></ns:Member>
  <Member id="3"/>
</Members></Export>"#;
        let rows = rows(text, "Export/Members/Member");
        assert_eq!(rows.len(), 3, "{rows:?}");
        let m = fields(&rows[0]);
        assert_eq!(m["id"], "1");
        assert_eq!(m["Name"]["Family"], "O'Brien");
        assert_eq!(m["Name"]["Given"], serde_json::json!(["Ann", "Marie"]));
        assert_eq!(m["Note"], Value::Null);
        assert_eq!(m["Memo"], "a < b");
        assert_eq!(fields(&rows[1])["Dob"], "1979-12-31");
        assert_eq!(fields(&rows[2])["id"], "3");
        assert!(matches!(rows[2], Row::Record { row: 3, .. }));
    }

    #[test]
    fn a_malformed_record_is_refused_and_the_next_is_read() {
        let text = "<R><M><A>1</A></M><M><A>2</B></M><M><A>&bogus;</A></M><M><A>4</A></M></R>";
        let rows = rows(text, "R/M");
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(fields(&rows[0])["A"], "1");
        let Row::Bad {
            place,
            message,
            row,
        } = &rows[1]
        else {
            panic!("{rows:?}")
        };
        assert_eq!(*row, 2);
        assert!(place.starts_with("record 2"), "{place}");
        assert!(message.contains("</B>"), "{message}");
        assert!(matches!(&rows[2], Row::Bad { message, .. } if message.contains("bogus")));
        assert_eq!(fields(&rows[3])["A"], "4");
    }

    #[test]
    fn a_file_cut_inside_a_record_says_so() {
        let rows = rows("<R><M><A>1</A></M><M><A>2", "R/M");
        assert_eq!(rows.len(), 2);
        assert!(matches!(&rows[1], Row::Bad { message, .. } if message.contains("ends inside")));
    }

    #[test]
    fn syntax_errors_are_named_not_panics() {
        let rows = rows("<R><M><A x=1>1</A></M><M><A>2</A></M></R>", "R/M");
        assert!(!rows.is_empty());
        assert!(matches!(&rows[0], Row::Bad { .. }), "{rows:?}");
    }
}
