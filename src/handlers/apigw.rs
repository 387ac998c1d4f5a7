//! What the API Gateway handlers (`gateway`, `ingest-api`) share: headers in and out of the
//! proxy events of both payload versions.

use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue};

/// A response's headers as the event types carry them; a header that HTTP cannot carry is
/// left out rather than failing the whole response.
pub(crate) fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// A request header's value, when it is text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The scheme the caller used: `https` unless the proxy says plain `http`.
pub(crate) fn scheme(headers: &HeaderMap) -> &str {
    match header(headers, "x-forwarded-proto") {
        Some("http") => "http",
        _ => "https",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_unusable_ones_are_left_out() {
        let map = header_map(&[
            ("etag".into(), "W/\"1\"".into()),
            ("bad name".into(), "x".into()),
            ("x-forwarded-proto".into(), "http".into()),
        ]);
        assert_eq!(header(&map, "etag"), Some("W/\"1\""));
        assert_eq!(map.len(), 2);
        assert_eq!(scheme(&map), "http");
        assert_eq!(scheme(&HeaderMap::new()), "https");
    }
}
