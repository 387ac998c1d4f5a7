//! NDJSON (JSON Lines): one JSON object a line. Blank lines are skipped; a line that is not a
//! JSON object is refused naming its row and line, and reading goes on.

use std::io::BufRead;

use serde_json::Value;

use super::row::{Broken, Row, not_utf8, read_line, strip_bom, trim_eol};

pub fn read(input: &mut dyn BufRead, emit: &mut dyn FnMut(Row)) -> Result<(), Broken> {
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut row = 0u64;
    loop {
        match read_line(input, &mut buf) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                return Err(Broken::new(
                    row + 1,
                    format!("row {} (line {})", row + 1, line + 1),
                    e,
                ));
            }
        }
        line += 1;
        let bytes = trim_eol(if line == 1 { strip_bom(&buf) } else { &buf });
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        row += 1;
        let place = format!("row {row} (line {line})");
        let bad = |message: String| Row::Bad {
            row,
            place: place.clone(),
            message,
        };
        emit(match std::str::from_utf8(bytes) {
            Err(_) => bad(not_utf8("the line")),
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(fields)) => Row::Record {
                    row,
                    fields: fields.into(),
                },
                Ok(other) => bad(format!(
                    "a JSON object is needed, not {}",
                    match other {
                        Value::Array(_) => "an array",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        _ => "null",
                    }
                )),
                // serde_json's message gives the column.
                Err(e) => bad(format!("not JSON: {e}")),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_blank_lines_and_bad_lines() {
        let text = b"{\"id\": 1}\n\n[1]\n{\"id\": 2\n{\"id\": \"\xe9\"}\r\n{\"id\": 3}";
        let mut out = Vec::new();
        read(&mut &text[..], &mut |r| out.push(r)).unwrap();
        assert_eq!(out.len(), 5);
        assert!(matches!(&out[0], Row::Record { row: 1, fields } if fields["id"] == 1));
        assert!(
            matches!(&out[1], Row::Bad { place, message, .. } if place == "row 2 (line 3)" && message.contains("array"))
        );
        assert!(
            matches!(&out[2], Row::Bad { place, message, .. } if place == "row 3 (line 4)" && message.contains("not JSON"))
        );
        assert!(matches!(&out[3], Row::Bad { message, .. } if message.contains("UTF-8")));
        assert!(matches!(&out[4], Row::Record { row: 5, fields } if fields["id"] == 3));
    }
}
