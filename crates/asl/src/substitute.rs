//! `${Name}` DefinitionSubstitutions, as CloudFormation and SAM apply them.

use std::collections::HashMap;

use crate::definition::DefinitionError;

/// Replaces every `${Name}` (name: letters, digits, `_`, `-`, `.`) with its value. Values are
/// inserted as raw text, as SAM does. Other `${...}` text is left alone; a placeholder without a
/// value is an error naming it.
pub fn substitute(
    definition: &str,
    values: &HashMap<String, String>,
) -> Result<String, DefinitionError> {
    let mut out = String::with_capacity(definition.len());
    let mut rest = definition;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            let name = &after[..name_len];
            let value = values
                .get(name)
                .ok_or_else(|| DefinitionError::UnresolvedSubstitution(name.to_string()))?;
            out.push_str(value);
            rest = &after[name_len + 1..];
        } else {
            out.push_str("${");
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_reports_missing() {
        let vals = HashMap::from([
            ("Queue".to_string(), "https://q".to_string()),
            ("Fn".to_string(), "arn:f".to_string()),
        ]);
        assert_eq!(
            substitute(r#"{"a":"${Queue}","b":"${Fn}:x","c":"$${x"}"#, &vals).unwrap(),
            r#"{"a":"https://q","b":"arn:f:x","c":"$${x"}"#
        );
        assert_eq!(
            substitute("${Missing}", &vals),
            Err(DefinitionError::UnresolvedSubstitution("Missing".into()))
        );
        assert_eq!(
            substitute("no placeholders ${ }", &vals).unwrap(),
            "no placeholders ${ }"
        );
    }
}
