//! Narrative links: an internal hyperlink (`href="#x"`) in a resource's narrative must
//! resolve to an anchor (`name` or `id` attribute) in the narratives of the resource or its
//! contained resources, or to a contained resource's id, as the reference validator checks.
//! Each Bundle entry's resource is its own scope.

use std::collections::HashSet;

use serde_json::Value;

use super::structure::Sink;

/// Resources in Bundles inside Bundles are followed to this depth.
const MAX_DEPTH: usize = 4;

/// Checks the internal links of `resource`'s narrative (and of its contained resources'),
/// then those of each Bundle entry.
pub(crate) fn check_links(resource: &Value, loc: &str, sink: &mut Sink) {
    check_scope(resource, loc, sink, 0);
}

fn check_scope(resource: &Value, loc: &str, sink: &mut Sink, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let contained: &[Value] = resource
        .get("contained")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    // Each narrative with the index of its contained resource (`None`: the resource's own);
    // its location is written only for an issue.
    fn text_div(r: &Value) -> Option<&str> {
        r.get("text")
            .and_then(|t| t.get("div"))
            .and_then(Value::as_str)
    }
    let divs: Vec<(Option<usize>, &str)> = text_div(resource)
        .map(|d| (None, d))
        .into_iter()
        .chain(
            contained
                .iter()
                .enumerate()
                .filter_map(|(i, c)| text_div(c).map(|d| (Some(i), d))),
        )
        .collect();
    if divs.iter().any(|(_, d)| d.contains("href")) {
        let mut anchors: HashSet<&str> = contained
            .iter()
            .filter_map(|c| c.get("id").and_then(Value::as_str))
            .collect();
        for (_, d) in &divs {
            anchors.extend(attributes(d, "name"));
            anchors.extend(attributes(d, "id"));
        }
        for (index, d) in &divs {
            for href in attributes(d, "href") {
                if let Some(target) = href.strip_prefix('#')
                    && !target.is_empty()
                    && !anchors.contains(target)
                {
                    let at = match index {
                        None => format!("{loc}.text.div"),
                        Some(i) => format!("{loc}.contained[{i}].text.div"),
                    };
                    sink.error(
                        "invalid",
                        &at,
                        "an internal hyperlink of the narrative does not resolve to an anchor or a contained resource".into(),
                    );
                }
            }
        }
    }
    if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        for (i, e) in resource
            .get("entry")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if let Some(r) = e.get("resource") {
                check_scope(r, &format!("{loc}.entry[{i}].resource"), sink, depth + 1);
            }
        }
    }
}

/// The values of the attribute `name` on the tags of `html` (`name="v"` or `name='v'`).
fn attributes<'h>(html: &'h str, name: &str) -> Vec<&'h str> {
    let mut out = Vec::new();
    let bytes = html.as_bytes();
    let mut from = 0;
    while let Some(pos) = html[from..].find(name) {
        let start = from + pos;
        from = start + name.len();
        let before_ok = start > 0 && bytes[start - 1].is_ascii_whitespace();
        let rest = html[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        let value = &rest[1..];
        if let Some(end) = value.find(quote)
            && before_ok
        {
            out.push(&value[..end]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(r: &Value) -> Vec<String> {
        let mut sink = Sink::default();
        check_links(r, "List", &mut sink);
        sink.outcome
            .issues
            .iter()
            .map(|i| i.expression.join(","))
            .collect()
    }

    #[test]
    fn internal_links_must_resolve() {
        let div = |href: &str| {
            format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a name=\"top\"> </a><p id='p1'>x</p><a href=\"{href}\">y</a></div>"
            )
        };
        let list = |href: &str| {
            json!({"resourceType": "List", "text": {"status": "generated", "div": div(href)},
                "contained": [{"resourceType": "Device", "id": "dev"}]})
        };
        assert!(errors(&list("#top")).is_empty());
        assert!(errors(&list("#p1")).is_empty());
        assert!(errors(&list("#dev")).is_empty());
        assert!(errors(&list("http://example.org/#nowhere")).is_empty());
        assert_eq!(errors(&list("#hcList/dev")), vec!["List.text.div"]);
        assert_eq!(errors(&list("#missing")), vec!["List.text.div"]);
    }

    #[test]
    fn bundle_entries_are_their_own_scope_and_odd_markup_does_not_panic() {
        let b = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient", "text": {"div": "<div><a href=\"#x\">a</a></div>"}}},
            {"resource": {"resourceType": "Patient", "text": {"div": "<div><a name=\"x\">a</a></div>"}}}]});
        assert_eq!(errors(&b), vec!["List.entry[0].resource.text.div"]);
        for odd in [
            "<div href",
            "<div href=",
            "<div href=\"#",
            "<div name='x",
            "href=\"#a\"",
        ] {
            let r = json!({"resourceType": "Basic", "text": {"div": odd}});
            assert!(errors(&r).len() <= 1, "{odd}");
        }
    }
}
