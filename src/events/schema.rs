//! The change-event JSON Schema (`infra/schemas/change-event.schema.json`), compiled once, so
//! tests (and any publisher) can check an event envelope against the published contract.

use std::sync::OnceLock;

use jsonschema::{Draft, Validator};
use serde_json::Value;

/// The schema's text, as published in `infra/schemas/`.
pub const CHANGE_EVENT_SCHEMA: &str = include_str!("../../infra/schemas/change-event.schema.json");

fn validator() -> Result<&'static Validator, String> {
    static VALIDATOR: OnceLock<Result<Validator, String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let schema: Value = serde_json::from_str(CHANGE_EVENT_SCHEMA)
                .map_err(|e| format!("change-event schema is not JSON: {e}"))?;
            jsonschema::options()
                .with_draft(Draft::Draft202012)
                .offline()
                .build(&schema)
                .map_err(|e| format!("change-event schema does not compile: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Checks a delivered envelope against the schema and the rules it cannot express (the
/// envelope id is the detail's eventId; the resource is `resourceType/id`). Returns every
/// violation, each with its JSON pointer.
pub fn check_change_event(envelope: &Value) -> Result<(), Vec<String>> {
    check(envelope, true)
}

/// As [`check_change_event`], for an event delivered by EventBridge, whose envelope `id` is
/// the bus's own (EventBridge assigns it; `detail.eventId` stays the stable id).
pub fn check_eventbridge_event(envelope: &Value) -> Result<(), Vec<String>> {
    check(envelope, false)
}

fn check(envelope: &Value, local_id: bool) -> Result<(), Vec<String>> {
    let validator = validator().map_err(|e| vec![e])?;
    let mut problems: Vec<String> = validator
        .iter_errors(envelope)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if problems.is_empty() {
        let d = &envelope["detail"];
        if local_id && envelope["id"] != d["eventId"] {
            problems.push("/id: differs from /detail/eventId".into());
        }
        let reference = format!(
            "{}/{}",
            d["resourceType"].as_str().unwrap_or_default(),
            d["id"].as_str().unwrap_or_default()
        );
        if envelope["resources"][0].as_str() != Some(reference.as_str()) {
            problems.push(format!("/resources/0: expected {reference}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeEvent, ChangeEventDetail, ChangeKind, RecordKey, Sequence};
    use serde_json::json;

    fn good() -> Value {
        ChangeEvent::new(
            ChangeKind::Deleted,
            ChangeEventDetail {
                event_id: ChangeEventDetail::stable_event_id("Patient", "p-1", "3"),
                resource_type: "Patient".into(),
                id: "p-1".into(),
                version_id: "3".into(),
                last_updated: "2024-01-02T03:04:05.678Z".parse().unwrap(),
                source: "app".into(),
                entity: "patients".into(),
                key: RecordKey::from_pairs([("pk", json!("p-1")), ("n", json!(7))]),
                sequence: Sequence::parse("400000000000000000006").unwrap(),
            },
        )
        .delivered("123456789012", "eu-west-1")
    }

    #[test]
    fn an_emitted_event_is_valid_and_its_round_trip_too() {
        let e = good();
        check_change_event(&e).unwrap();
        let detail: ChangeEventDetail = serde_json::from_value(e["detail"].clone()).unwrap();
        assert_eq!(serde_json::to_value(&detail).unwrap(), e["detail"]);
        let mut replayed = e.clone();
        replayed["replay-name"] = json!("r1");
        check_change_event(&replayed).unwrap();
    }

    #[test]
    fn violations_are_refused_with_their_place() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "/detail",
                Box::new(|e| {
                    e["detail"].as_object_mut().unwrap().remove("eventId");
                }),
            ),
            (
                "/detail-type",
                Box::new(|e| e["detail-type"] = json!("FhirResourceTouched")),
            ),
            ("/source", Box::new(|e| e["source"] = json!("other"))),
            (
                "/detail/sequence",
                Box::new(|e| e["detail"]["sequence"] = json!("01")),
            ),
            (
                "/detail/sequence",
                Box::new(|e| e["detail"]["sequence"] = json!(5)),
            ),
            ("/detail/key", Box::new(|e| e["detail"]["key"] = json!({}))),
            (
                "/detail/lastUpdated",
                Box::new(|e| e["detail"]["lastUpdated"] = json!("yesterday")),
            ),
            (
                "/detail",
                Box::new(|e| e["detail"]["resource"] = json!({"resourceType": "Patient"})),
            ),
            ("", Box::new(|e| e["extra"] = json!(1))),
            (
                "/id",
                Box::new(|e| {
                    e["id"] = json!(ChangeEventDetail::stable_event_id("Patient", "p-1", "2"))
                }),
            ),
            (
                "/resources/0",
                Box::new(|e| e["resources"] = json!(["Patient/other"])),
            ),
        ];
        for (place, mutate) in cases {
            let mut e = good();
            mutate(&mut e);
            let problems = check_change_event(&e).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with(&format!("{place}:"))),
                "{place}: {problems:?}"
            );
        }
    }
}
