//! Parquet values, as the row reader gives them, to the JSON a mapping sees.
//!
//! | Parquet (DMS type) | JSON |
//! |---|---|
//! | BOOLEAN | `true`/`false` |
//! | INT8..INT64, UINT8..UINT64 | integer |
//! | FLOAT, DOUBLE (REAL4, REAL8) | number (a float keeps its shortest decimal form: `0.1f32` is `0.1`); NaN and infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | DECIMAL (INT32, INT64, FIXED_LEN_BYTE_ARRAY, BYTE_ARRAY; NUMERIC) | exact: a JSON number when one has exactly that value (`19273.65`), else the exact digits as a string (`"12345678901234567890.12"`), the rule the DynamoDB source uses for `N` |
//! | DATE | `"YYYY-MM-DD"` |
//! | TIME millis/micros | `"HH:MM:SS.sss"` / `"HH:MM:SS.ssssss"` |
//! | TIMESTAMP millis/micros/nanos | RFC 3339 with 3/6/9 fraction digits, ending `Z` when `isAdjustedToUTC`, with no zone otherwise (a local date-time) |
//! | STRING (incl. uuid, json, jsonb, CLOB) | string (JSON text is not parsed) |
//! | UUID logical type (16 bytes) | hyphenated lower-case string |
//! | BINARY (BYTES, BLOB, bytea) | base64 (standard alphabet, padded) |
//! | null | `null` |
//! | groups, lists, maps (DMS writes none) | object, array, object (array of `[key, value]` pairs when keys are not strings) |

use base64::Engine;
use chrono::{DateTime, Datelike, NaiveTime, TimeDelta, Timelike};
use parquet::basic::{LogicalType, TimeUnit};
use parquet::data_type::Decimal;
use parquet::record::Field;
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value};

use crate::sources::dynamodb::number_to_json;

/// What a top-level column's values need beyond the row reader's [`Field`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// Timestamps are UTC instants (`isAdjustedToUTC`), not local date-times.
    pub utc: bool,
    /// A nanosecond timestamp (the row reader gives it as a plain INT64).
    pub nanos: bool,
    /// The UUID logical type (16 raw bytes).
    pub uuid: bool,
    /// A nanosecond time of day (the row reader gives it as a plain INT64).
    pub time_nanos: bool,
}

impl ColumnInfo {
    /// What a top-level schema field says.
    pub fn of(field: &Type) -> ColumnInfo {
        let mut info = ColumnInfo {
            name: field.name().to_owned(),
            // Legacy TIMESTAMP_MILLIS/MICROS (no logical type) are UTC by the spec.
            utc: true,
            ..ColumnInfo::default()
        };
        match field.get_basic_info().logical_type_ref() {
            Some(LogicalType::Timestamp(t)) => {
                info.utc = t.is_adjusted_to_u_t_c;
                info.nanos = matches!(t.unit, TimeUnit::NANOS);
            }
            Some(LogicalType::Time(t)) => {
                info.time_nanos = matches!(t.unit, TimeUnit::NANOS);
            }
            Some(LogicalType::Uuid) => info.uuid = true,
            _ => {}
        }
        info
    }
}

/// Converts one value; the error says what is wrong with it (never the value itself).
pub fn to_json(field: &Field, col: &ColumnInfo) -> Result<Value, String> {
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) if col.nanos => timestamp(*n, 1_000_000_000, col.utc)?,
        Field::Long(n) if col.time_nanos => time(n.div_euclid(1_000), 6)?,
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(f) => float(f64::from(f32::from(*f)), Some(&f32::from(*f).to_string())),
        Field::Float(f) => float(f64::from(*f), Some(&f.to_string())),
        // An f64's shortest form parses back to itself: no text needed.
        Field::Double(f) => float(*f, None),
        Field::Decimal(d) => {
            let text = decimal_text(d)?;
            number_to_json(&text).unwrap_or(Value::String(text))
        }
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) if col.uuid && b.len() == 16 => Value::String(uuid_text(b.data())),
        Field::Bytes(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.data()))
        }
        Field::Date(days) => Value::String(date_text(*days)?),
        Field::TimeMillis(ms) => time(i64::from(*ms) * 1_000, 3)?,
        Field::TimeMicros(us) => time(*us, 6)?,
        Field::TimestampMillis(ms) => timestamp(*ms, 1_000, col.utc)?,
        Field::TimestampMicros(us) => timestamp(*us, 1_000_000, col.utc)?,
        Field::Group(row) => {
            let mut m = Map::new();
            for (name, f) in row.get_column_iter() {
                m.insert(name.clone(), to_json(f, &ColumnInfo::default())?);
            }
            Value::Object(m)
        }
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(|f| to_json(f, &ColumnInfo::default()))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let inner = ColumnInfo::default();
            if map
                .entries()
                .iter()
                .all(|(k, _)| matches!(k, Field::Str(_)))
            {
                let mut m = Map::new();
                for (k, v) in map.entries() {
                    if let Field::Str(k) = k {
                        m.insert(k.clone(), to_json(v, &inner)?);
                    }
                }
                Value::Object(m)
            } else {
                Value::Array(
                    map.entries()
                        .iter()
                        .map(|(k, v)| {
                            Ok(Value::Array(vec![to_json(k, &inner)?, to_json(v, &inner)?]))
                        })
                        .collect::<Result<_, String>>()?,
                )
            }
        }
    })
}

fn float(f: f64, shortest: Option<&str>) -> Value {
    if f.is_nan() {
        return Value::String("NaN".into());
    }
    if f.is_infinite() {
        return Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into());
    }
    // `shortest` is an f32's own shortest form, so an f32 0.1 stays 0.1, not 0.10000000149.
    let f = shortest.and_then(|s| s.parse::<f64>().ok()).unwrap_or(f);
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// The text of a DATE (`days` since 1970-01-01): `YYYY-MM-DD`.
pub fn date_text(days: i32) -> Result<String, String> {
    let d = DateTime::from_timestamp(i64::from(days) * 86_400, 0)
        .ok_or_else(|| format!("date {days} days from 1970-01-01 is out of range"))?;
    Ok(ymd(&d.date_naive()))
}

/// A timestamp of `n` units (`per_second` units a second) since the epoch.
fn timestamp(n: i64, per_second: i64, utc: bool) -> Result<Value, String> {
    timestamp_text(n, per_second, utc).map(Value::String)
}

/// The text of a timestamp of `n` units (`per_second`: 1,000, 1,000,000 or 1,000,000,000)
/// since the epoch: RFC 3339 with 3, 6 or 9 fraction digits, ending `Z` when `utc`.
pub fn timestamp_text(n: i64, per_second: i64, utc: bool) -> Result<String, String> {
    let secs = n.div_euclid(per_second);
    let frac = n.rem_euclid(per_second);
    let nanos = frac * (1_000_000_000 / per_second);
    let t = DateTime::from_timestamp(secs, nanos as u32)
        .ok_or_else(|| "timestamp out of range".to_owned())?;
    let n = t.naive_utc();
    let (digits, frac) = match per_second {
        1_000 => (3, n.nanosecond() / 1_000_000),
        1_000_000 => (6, n.nanosecond() / 1_000),
        _ => (9, n.nanosecond()),
    };
    let text = format!(
        "{}T{:02}:{:02}:{:02}.{frac:0digits$}",
        ymd(&n.date()),
        n.hour(),
        n.minute(),
        n.second()
    );
    Ok(if utc { format!("{text}Z") } else { text })
}

/// A time of day of `us` microseconds after midnight, with `digits` fraction digits.
fn time(us: i64, digits: usize) -> Result<Value, String> {
    if !(0..86_400_000_000).contains(&us) {
        return Err("time of day out of range".to_owned());
    }
    let t = NaiveTime::MIN + TimeDelta::microseconds(us);
    let fmt = if digits == 3 {
        "%H:%M:%S%.3f"
    } else {
        "%H:%M:%S%.6f"
    };
    Ok(Value::String(t.format(fmt).to_string()))
}

/// `YYYY-MM-DD` (four-digit years; chrono's `%Y` formatting is an interpreter per call).
fn ymd(d: &chrono::NaiveDate) -> String {
    if (0..=9999).contains(&d.year()) {
        format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
    } else {
        d.format("%Y-%m-%d").to_string()
    }
}

fn uuid_text(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The exact decimal text of a Parquet decimal: the big-endian two's-complement unscaled
/// value with the point `scale` digits from the right.
pub fn decimal_text(d: &Decimal) -> Result<String, String> {
    let scale = d.scale();
    if scale < 0 {
        return Err(format!("decimal scale {scale} is negative"));
    }
    let (negative, digits) = unscaled_digits(d.data())?;
    let scale = scale as usize;
    let mut text = String::with_capacity(digits.len() + 3);
    if negative {
        text.push('-');
    }
    if scale == 0 {
        text.push_str(&digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        text.push_str(int);
        text.push('.');
        text.push_str(frac);
    } else {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', scale - digits.len()));
        text.push_str(&digits);
    }
    Ok(text)
}

/// The sign and decimal digits of a big-endian two's-complement integer of any length.
fn unscaled_digits(bytes: &[u8]) -> Result<(bool, String), String> {
    if bytes.is_empty() {
        return Err("decimal with no bytes".to_owned());
    }
    let negative = bytes[0] & 0x80 != 0;
    if bytes.len() <= 16 {
        let mut v: i128 = if negative { -1 } else { 0 };
        for b in bytes {
            v = (v << 8) | i128::from(*b);
        }
        return Ok((negative, v.unsigned_abs().to_string()));
    }
    // Wider than 128 bits: magnitude by two's complement, then long division by 10.
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (s, carry) = b.overflowing_add(1);
            *b = s;
            if !carry {
                break;
            }
        }
    }
    let mut digits = Vec::new();
    while mag.iter().any(|b| *b != 0) {
        let mut rem: u32 = 0;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    Ok((negative, String::from_utf8(digits).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::data_type::ByteArray;
    use serde_json::json;

    fn utc() -> ColumnInfo {
        ColumnInfo {
            utc: true,
            ..ColumnInfo::default()
        }
    }

    #[test]
    fn decimals_are_exact_whatever_their_storage() {
        let d = |bytes: Vec<u8>, scale| {
            decimal_text(&Decimal::from_bytes(ByteArray::from(bytes), 38, scale)).unwrap()
        };
        assert_eq!(d(vec![0x00, 0x1d, 0x68, 0xc5], 2), "19273.65"); // 1927365
        assert_eq!(d(vec![0xff, 0xff, 0xff, 0x85], 2), "-1.23");
        assert_eq!(d(vec![0x05], 3), "0.005");
        assert_eq!(d(vec![0xfb], 3), "-0.005");
        assert_eq!(d(vec![0x00], 0), "0");
        assert_eq!(
            decimal_text(&Decimal::from_i32(-1234, 9, 2)).unwrap(),
            "-12.34"
        );
        assert_eq!(
            decimal_text(&Decimal::from_i64(i64::MAX, 18, 4)).unwrap(),
            "922337203685477.5807"
        );
        // 17 bytes (beyond i128): 2^128 and -(2^128).
        let mut big = vec![0x01];
        big.extend([0u8; 16]);
        assert_eq!(d(big, 0), "340282366920938463463374607431768211456");
        let mut neg = vec![0xff];
        neg.extend([0u8; 16]);
        assert_eq!(d(neg, 3), "-340282366920938463463374607431768211.456");
        assert!(decimal_text(&Decimal::from_bytes(ByteArray::from(vec![]), 1, 0)).is_err());
        assert!(decimal_text(&Decimal::from_i32(1, 9, -1)).is_err());
        // As JSON: a number where one is exact, else the digits as a string.
        let col = ColumnInfo::default();
        let v = to_json(&Field::Decimal(Decimal::from_i32(1927365, 9, 2)), &col).unwrap();
        assert_eq!(v, json!(19273.65));
        let mut wide = vec![0x00];
        wide.extend([0xffu8; 12]);
        let v = to_json(
            &Field::Decimal(Decimal::from_bytes(ByteArray::from(wide), 38, 2)),
            &col,
        )
        .unwrap();
        assert_eq!(v, json!("792281625142643375935439503.35"));
    }

    #[test]
    fn times_dates_and_timestamps() {
        let col = ColumnInfo::default();
        assert_eq!(
            to_json(&Field::Date(19_840), &col).unwrap(),
            json!("2024-04-27")
        );
        assert_eq!(
            to_json(&Field::Date(-1), &col).unwrap(),
            json!("1969-12-31")
        );
        assert_eq!(
            to_json(&Field::TimeMillis(3_723_004), &col).unwrap(),
            json!("01:02:03.004")
        );
        assert_eq!(
            to_json(&Field::TimeMicros(86_399_999_999), &col).unwrap(),
            json!("23:59:59.999999")
        );
        assert!(to_json(&Field::TimeMicros(86_400_000_000), &col).is_err());
        assert_eq!(
            to_json(&Field::TimestampMillis(1_658_817_978_616), &utc()).unwrap(),
            json!("2022-07-26T06:46:18.616Z")
        );
        assert_eq!(
            to_json(&Field::TimestampMicros(-1), &utc()).unwrap(),
            json!("1969-12-31T23:59:59.999999Z")
        );
        assert_eq!(
            to_json(&Field::TimestampMicros(1_658_817_978_616_807), &col).unwrap(),
            json!("2022-07-26T06:46:18.616807")
        );
        let nanos = ColumnInfo {
            nanos: true,
            utc: true,
            ..ColumnInfo::default()
        };
        assert_eq!(
            to_json(&Field::Long(1_000_000_001), &nanos).unwrap(),
            json!("1970-01-01T00:00:01.000000001Z")
        );
        assert!(to_json(&Field::TimestampMillis(i64::MAX), &utc()).is_err());
    }

    #[test]
    fn a_double_is_its_own_shortest_form() {
        let col = ColumnInfo::default();
        for f in [
            0.1,
            -2.5e-300,
            1.0 / 3.0,
            123_456_789.123_456_78,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let text = f.to_string();
            let through_text = Number::from_f64(text.parse::<f64>().unwrap()).unwrap();
            assert_eq!(
                to_json(&Field::Double(f), &col),
                Ok(Value::Number(through_text))
            );
        }
        assert_eq!(
            to_json(&Field::Double(f64::NAN), &col),
            Ok(Value::String("NaN".into()))
        );
    }

    #[test]
    fn numbers_strings_and_bytes() {
        let col = ColumnInfo::default();
        assert_eq!(to_json(&Field::Float(0.1), &col).unwrap(), json!(0.1));
        assert_eq!(
            to_json(&Field::Double(f64::NAN), &col).unwrap(),
            json!("NaN")
        );
        assert_eq!(
            to_json(&Field::Double(f64::NEG_INFINITY), &col).unwrap(),
            json!("-Infinity")
        );
        assert_eq!(
            to_json(&Field::ULong(u64::MAX), &col).unwrap(),
            json!(u64::MAX)
        );
        assert_eq!(to_json(&Field::Byte(-8), &col).unwrap(), json!(-8));
        assert_eq!(
            to_json(&Field::Bytes(ByteArray::from(vec![0xde, 0xad])), &col).unwrap(),
            json!("3q0=")
        );
        let uuid = ColumnInfo {
            uuid: true,
            ..ColumnInfo::default()
        };
        assert_eq!(
            to_json(
                &Field::Bytes(ByteArray::from((0u8..16).collect::<Vec<_>>())),
                &uuid
            )
            .unwrap(),
            json!("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        assert_eq!(to_json(&Field::Null, &col).unwrap(), Value::Null);
        assert_eq!(
            to_json(&Field::Str("{\"a\":1}".into()), &col).unwrap(),
            json!("{\"a\":1}")
        );
    }
}
