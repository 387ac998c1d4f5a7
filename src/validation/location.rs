//! Instance locations as FHIRPath-like expressions (`Patient.name[0].given[1]`), the form an
//! OperationOutcome's `expression` takes, converted from JSON pointers.

use std::fmt::Write;

/// One step into a JSON instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    Element(&'a str),
    Index(usize),
}

/// Appends steps to a FHIRPath-like expression that starts at `root` (a resource type, or a
/// longer expression for a resource nested in another).
pub fn expression<'a>(root: &str, steps: impl IntoIterator<Item = Step<'a>>) -> String {
    let mut out = String::from(root);
    for step in steps {
        match step {
            Step::Element(name) if is_plain_name(name) => {
                out.push('.');
                out.push_str(name);
            }
            // FHIRPath's delimited identifier; backticks inside cannot be escaped there, so
            // they are dropped (an element name never contains one).
            Step::Element(name) => {
                out.push_str(".`");
                out.extend(name.chars().filter(|c| *c != '`'));
                out.push('`');
            }
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// Converts an RFC 6901 JSON pointer into a FHIRPath-like expression rooted at `root`:
/// `("Patient", "/name/0/given/1")` → `Patient.name[0].given[1]`. An all-digit segment is read
/// as an array index, which is always right for FHIR JSON (no element name is a number).
pub fn pointer_to_expression(root: &str, pointer: &str) -> String {
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    expression(
        root,
        segments.iter().map(|s| match s.parse::<usize>() {
            Ok(i) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Step::Index(i),
            _ => Step::Element(s),
        }),
    )
}

/// True for names that can stand in an expression without quoting: FHIR element names,
/// including primitive extensions (`_birthDate`).
pub fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_becomes_fhirpath() {
        assert_eq!(
            pointer_to_expression("Patient", "/name/0/given/1"),
            "Patient.name[0].given[1]"
        );
        assert_eq!(pointer_to_expression("Patient", ""), "Patient");
        assert_eq!(
            pointer_to_expression("Observation", "/_effectiveDateTime/extension/12/url"),
            "Observation._effectiveDateTime.extension[12].url"
        );
        assert_eq!(
            pointer_to_expression("Bundle.entry[3].resource", "/code/coding/0"),
            "Bundle.entry[3].resource.code.coding[0]"
        );
    }

    #[test]
    fn odd_names_are_delimited_and_unescaped() {
        assert_eq!(
            pointer_to_expression("Patient", "/a~1b/c~0d/x y"),
            "Patient.`a/b`.`c~d`.`x y`"
        );
        assert_eq!(pointer_to_expression("Patient", "/`x`"), "Patient.`x`");
        // An empty key is still a (delimited) element, not an index.
        assert_eq!(pointer_to_expression("Patient", "/"), "Patient.``");
    }

    #[test]
    fn steps_render_without_ambiguity() {
        let steps = [
            Step::Element("contained"),
            Step::Index(0),
            Step::Element("id"),
        ];
        assert_eq!(expression("Patient", steps), "Patient.contained[0].id");
        assert!(is_plain_name("_birthDate"));
        assert!(!is_plain_name("0name"));
        assert!(!is_plain_name(""));
        assert!(!is_plain_name(&"a".repeat(65)));
    }
}
