use super::*;
use crate::config::PipelineConfig;
use crate::events::relay_outbox;
use crate::model::{
    ChangeEventDetail, ChangeKind, Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef,
    Sequence,
};
use crate::scripted_http::ScriptedHttp;
use crate::store::sqlite::SqliteStore;
use crate::store::{FhirStore, Outbox};
use serde_json::json;
use std::path::Path;

fn event(kind: ChangeKind, rtype: &str, id: &str, version: &str) -> ChangeEvent {
    ChangeEvent::new(
        kind,
        ChangeEventDetail {
            event_id: ChangeEventDetail::stable_event_id(rtype, id, version),
            resource_type: rtype.into(),
            id: id.into(),
            version_id: version.into(),
            last_updated: "2024-01-01T00:00:00Z".parse().unwrap(),
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!(id))]),
            sequence: Sequence::from(1),
        },
    )
}

/// The events in an NDJSON target, each checked against the published change-event schema.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| checked(serde_json::from_str(l).unwrap()))
        .collect()
}

fn checked(envelope: Value) -> Value {
    if let Err(problems) = crate::events::schema::check_change_event(&envelope) {
        panic!("{envelope}: {problems:?}");
    }
    envelope
}

fn ids(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["detail"]["id"].as_str().unwrap(),
                v["detail"]["versionId"].as_str().unwrap()
            )
        })
        .collect()
}

fn bus_from_yaml(events_yaml: &str, data: &Path) -> LocalBus {
    let yaml = format!(
        "{events_yaml}\nsources:\n  - name: app\n    dynamodb: {{ table: T }}\n    entities: {{ patients: {{ key: [pk], mapping: m.yaml }} }}\n"
    );
    let config = PipelineConfig::from_yaml(&yaml, Path::new("p.yaml")).unwrap();
    LocalBus::open(
        config.events.local.as_ref().unwrap(),
        &DataDir(data.to_path_buf()),
    )
    .unwrap()
}

fn accepted(results: &[PutEntryResult]) -> usize {
    results
        .iter()
        .filter(|r| matches!(r, PutEntryResult::Accepted(_)))
        .count()
}

#[tokio::test]
async fn rules_route_by_pattern_and_everything_is_archived() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_from_yaml(
        r#"
events:
  local:
    ndjson: all.ndjson
    rules:
      - name: patients-changed
        pattern: { detail-type: [FhirResourceCreated, FhirResourceUpdated], detail: { resourceType: [Patient] } }
        targets: [ { ndjson: patients.ndjson } ]
      - name: deletions
        pattern: '{"detail-type": [{"suffix": "Deleted"}]}'
        targets: [ { ndjson: deleted.ndjson } ]
"#,
        dir.path(),
    );
    assert_eq!(
        bus.rule_names(),
        vec![ALL_EVENTS_RULE, "patients-changed", "deletions"]
    );
    let events = [
        event(ChangeKind::Created, "Patient", "a", "1"),
        event(ChangeKind::Created, "Observation", "o", "1"),
        event(ChangeKind::Updated, "Patient", "a", "2"),
        event(ChangeKind::Deleted, "Patient", "a", "3"),
    ];
    let r = bus.put_events(&events).await.unwrap();
    assert_eq!(accepted(&r), 4);
    assert_eq!(
        r[0],
        PutEntryResult::Accepted(events[0].detail.event_id.clone())
    );
    assert_eq!(
        ids(&lines(&dir.path().join("all.ndjson"))),
        ["a/1", "o/1", "a/2", "a/3"]
    );
    assert_eq!(
        ids(&lines(&dir.path().join("patients.ndjson"))),
        ["a/1", "a/2"]
    );
    assert_eq!(ids(&lines(&dir.path().join("deleted.ndjson"))), ["a/3"]);
    let archived = bus.archive().list(None, 0, 100).unwrap();
    assert_eq!(archived.len(), 4);
    for a in archived {
        checked(a.envelope);
    }

    // Putting the same events again (a relay crash before marking) repeats nothing.
    bus.put_events(&events).await.unwrap();
    assert_eq!(lines(&dir.path().join("all.ndjson")).len(), 4);
    assert_eq!(lines(&dir.path().join("patients.ndjson")).len(), 2);
    assert_eq!(bus.archive().list(None, 0, 100).unwrap().len(), 4);
}

#[tokio::test]
async fn a_failing_target_keeps_the_event_and_each_target_gets_it_once() {
    let dir = tempfile::tempdir().unwrap();
    // The webhook takes the first event, then fails the second (one attempt per delivery).
    let server = ScriptedHttp::statuses(vec![200, 503]);
    let bus = bus_from_yaml(
        &format!(
            r#"
events:
  local:
    rules:
      - name: file
        pattern: {{ source: [fhir-unify] }}
        targets: [ {{ ndjson: file.ndjson }} ]
      - name: hook
        pattern: {{ source: [fhir-unify] }}
        targets: [ {{ webhook: {{ url: "{}", max_attempts: 1, initial_backoff_ms: 1 }} }} ]
"#,
            server.endpoint
        ),
        dir.path(),
    );
    let events: Vec<ChangeEvent> = (0..4)
        .map(|i| event(ChangeKind::Created, "Patient", &format!("p{i}"), "1"))
        .collect();
    let r = bus.put_events(&events).await.unwrap();
    assert!(matches!(r[0], PutEntryResult::Accepted(_)));
    assert!(
        matches!(&r[1], PutEntryResult::Failed { code, message } if code == TARGET_FAILED && message.contains("hook")),
        "{r:?}"
    );
    assert!(matches!(&r[2], PutEntryResult::Failed { code, .. } if code == PRECEDING_ENTRY_FAILED));
    assert!(matches!(&r[3], PutEntryResult::Failed { .. }));
    // The file rule was not held up by the webhook.
    assert_eq!(lines(&dir.path().join("file.ndjson")).len(), 4);

    // The relay puts the failed entries again; the webhook is back.
    let r = bus.put_events(&events[1..]).await.unwrap();
    assert_eq!(accepted(&r), 3, "{r:?}");
    let bodies: Vec<Value> = server.accepted_bodies().into_iter().map(checked).collect();
    assert_eq!(ids(&bodies), ["p0/1", "p1/1", "p2/1", "p3/1"]);
    assert_eq!(
        lines(&dir.path().join("file.ndjson")).len(),
        4,
        "file not repeated"
    );
}

async fn commit(store: &SqliteStore, ids: &[&str]) {
    for id in ids {
        store
            .apply(&[ResourceChange {
                target: ResourceRef {
                    resource_type: "Patient".into(),
                    id: (*id).into(),
                },
                op: ResourceOp::Upsert {
                    resource: json!({"resourceType": "Patient", "id": id}),
                },
                lineage: Lineage {
                    source: "app".into(),
                    entity: "patients".into(),
                    key: RecordKey::from_pairs([("pk", json!(id))]),
                    sequence: Sequence::from(1),
                    observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
                },
            }])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn through_the_outbox_a_webhook_outage_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedHttp::statuses(vec![200, 503, 503]);
    let bus = bus_from_yaml(
        &format!(
            r#"
events:
  local:
    rules:
      - name: hook
        pattern: {{ detail: {{ resourceType: [Patient] }} }}
        targets: [ {{ webhook: {{ url: "{}", max_attempts: 2, initial_backoff_ms: 1 }} }} ]
"#,
            server.endpoint
        ),
        dir.path(),
    );
    let store = SqliteStore::open_in_memory().unwrap();
    commit(&store, &["p0", "p1", "p2"]).await;
    let report = relay_outbox(&store, &bus).await.unwrap();
    assert_eq!((report.delivered, report.failed), (1, 2));
    assert_eq!(store.pending(10).await.unwrap().len(), 2);
    let report = relay_outbox(&store, &bus).await.unwrap();
    assert_eq!((report.delivered, report.failed), (2, 0));
    assert!(store.pending(10).await.unwrap().is_empty());
    let bodies: Vec<Value> = server.accepted_bodies().into_iter().map(checked).collect();
    assert_eq!(ids(&bodies), ["p0/1", "p1/1", "p2/1"]);
}

#[tokio::test]
async fn a_crash_after_the_file_write_but_before_the_ledger_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "events:\n  local:\n    ndjson: all.ndjson\n";
    let events = [event(ChangeKind::Created, "Patient", "a", "1")];
    {
        // The file was written, then the process died before the ledger and the outbox.
        let writer = NdjsonWriter::open(&dir.path().join("all.ndjson")).unwrap();
        writer
            .append(&[&events[0].delivered(LOCAL_ACCOUNT, LOCAL_REGION)])
            .unwrap();
    }
    let bus = bus_from_yaml(yaml, dir.path());
    let r = bus.put_events(&events).await.unwrap();
    assert_eq!(accepted(&r), 1);
    assert_eq!(lines(&dir.path().join("all.ndjson")).len(), 1);
}

#[tokio::test]
async fn limits_are_enforced_as_by_eventbridge() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_from_yaml("events:\n  local:\n    ndjson: all.ndjson\n", dir.path());
    let eleven: Vec<_> = (0..11)
        .map(|i| event(ChangeKind::Created, "Patient", &i.to_string(), "1"))
        .collect();
    assert!(matches!(
        bus.put_events(&eleven).await,
        Err(BusError::Invalid(_))
    ));
    let mut big = event(ChangeKind::Created, "Patient", "big", "1");
    big.resources = vec!["x".repeat(MAX_ENTRY_BYTES)];
    let r = bus
        .put_events(&[event(ChangeKind::Created, "Patient", "a", "1"), big])
        .await
        .unwrap();
    assert!(matches!(r[0], PutEntryResult::Accepted(_)));
    assert!(matches!(&r[1], PutEntryResult::Failed { code, .. } if code == "ValidationException"));
    assert_eq!(bus.archive().list(None, 0, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn replay_redelivers_archived_events_through_one_rule_or_all() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_from_yaml(
        r#"
events:
  local:
    ndjson: all.ndjson
    rules:
      - name: patients
        pattern: { detail: { resourceType: [Patient] } }
        targets: [ { ndjson: patients.ndjson } ]
"#,
        dir.path(),
    );
    let mut early = event(ChangeKind::Created, "Patient", "a", "1");
    early.time = "2024-01-01T00:00:00Z".parse().unwrap();
    let mut late = event(ChangeKind::Updated, "Patient", "a", "2");
    late.time = "2024-03-01T00:00:00Z".parse().unwrap();
    let mut obs = event(ChangeKind::Created, "Observation", "o", "1");
    obs.time = "2024-03-02T00:00:00Z".parse().unwrap();
    bus.put_events(&[early, late, obs]).await.unwrap();

    let since = "2024-02-01T00:00:00Z".parse().unwrap();
    let report = bus.replay(&since, Some("patients"), "r1").await.unwrap();
    assert_eq!(
        report,
        ReplayReport {
            events: 2,
            deliveries: 1
        }
    );
    let patients = lines(&dir.path().join("patients.ndjson"));
    assert_eq!(ids(&patients), ["a/1", "a/2", "a/2"]);
    assert_eq!(patients[2]["replay-name"], "r1");
    assert!(patients[1].get("replay-name").is_none());
    assert_eq!(
        lines(&dir.path().join("all.ndjson")).len(),
        3,
        "other rules untouched"
    );

    // All rules; replaying under the same name again writes nothing new to NDJSON files.
    let report = bus.replay(&since, None, "r2").await.unwrap();
    assert_eq!(
        report,
        ReplayReport {
            events: 2,
            deliveries: 3
        }
    );
    bus.replay(&since, None, "r2").await.unwrap();
    assert_eq!(lines(&dir.path().join("all.ndjson")).len(), 5);

    let e = bus.replay(&since, Some("nope"), "r3").await.unwrap_err();
    assert!(e.to_string().contains("patients"), "{e}");
}

#[tokio::test]
async fn sse_streams_are_reachable_through_the_bus_port() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_from_yaml(
        r#"
events:
  local:
    rules:
      - name: live
        pattern: { source: [fhir-unify] }
        targets: [ { sse: { stream: changes } } ]
"#,
        dir.path(),
    );
    let port: &dyn EventBus = &bus;
    let local = port.as_local().unwrap();
    assert_eq!(local.stream_names(), vec!["changes"]);
    assert!(local.subscribe("other").is_none());
    let mut rx = local.subscribe("changes").unwrap();
    let e = event(ChangeKind::Created, "Patient", "a", "1");
    bus.put_events(std::slice::from_ref(&e)).await.unwrap();
    let m = rx.recv().await.unwrap();
    assert_eq!(m.id, e.detail.event_id);
    let data = checked(serde_json::from_str(&m.data).unwrap());
    assert_eq!(data["detail"]["id"], "a");

    // A client reconnecting with Last-Event-ID reads what it missed from the archive.
    let later = [
        event(ChangeKind::Created, "Patient", "b", "1"),
        event(ChangeKind::Created, "Patient", "c", "1"),
    ];
    bus.put_events(&later).await.unwrap();
    let missed = local
        .stream_backlog("changes", Some(&e.detail.event_id), 10)
        .unwrap();
    let missed: Vec<&str> = missed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        missed,
        [
            later[0].detail.event_id.as_str(),
            later[1].detail.event_id.as_str()
        ]
    );
    assert_eq!(local.stream_backlog("changes", None, 2).unwrap().len(), 2);
    assert!(local.stream_backlog("other", None, 10).unwrap().is_empty());
}

#[test]
fn bad_rules_are_refused_at_load_naming_the_rule_and_the_place() {
    let load = |events: &str| {
        let yaml = format!(
            "{events}\nsources:\n  - name: app\n    dynamodb: {{ table: T }}\n    entities: {{ patients: {{ key: [pk], mapping: m.yaml }} }}\n"
        );
        PipelineConfig::from_yaml(&yaml, Path::new("p.yaml"))
            .err()
            .map(|e| e.message)
    };
    let rule = |pattern: &str, targets: &str| {
        format!(
            "events:\n  local:\n    rules:\n      - name: r1\n        pattern: {pattern}\n        targets: {targets}\n"
        )
    };
    let ok_target = "[ { ndjson: x.ndjson } ]";
    let e = load(&rule(
        "{ detail: { n: [ { numeric: ['>', 5, '<', 1] } ] } }",
        ok_target,
    ))
    .unwrap();
    assert!(
        e.contains("\"r1\"") && e.contains("detail.n[0].numeric"),
        "{e}"
    );
    let e = load(&rule("'{not json'", ok_target)).unwrap();
    assert!(e.contains("\"r1\"") && e.contains("pattern"), "{e}");
    let e = load(&rule("{ source: [x] }", "[]")).unwrap();
    assert!(e.contains("at least one target"), "{e}");
    let e = load(&rule(
        "{ source: [x] }",
        "[ { ndjson: a.ndjson, webhook: { url: 'http://x' } } ]",
    ))
    .unwrap();
    assert!(e.contains("exactly one kind"), "{e}");
    let e = load(&rule(
        "{ source: [x] }",
        "[ { webhook: { url: 'ftp://x' } } ]",
    ))
    .unwrap();
    assert!(e.contains("webhook.url"), "{e}");
    let e = load(&rule(
        "{ source: [x] }",
        "[ { webhook: { url: 'http://x', retries: 3 } } ]",
    ))
    .unwrap();
    assert!(e.contains("retries"), "unknown keys are errors: {e}");
    let e = load(
        &rule("{ source: [x] }", "[ { ndjson: events.ndjson } ]")
            .replace("    rules:", "    ndjson: events.ndjson\n    rules:"),
    )
    .unwrap();
    assert!(e.contains("already written"), "{e}");
    let two = format!(
        "{}      - name: r1\n        pattern: {{ source: [x] }}\n        targets: [ {{ ndjson: y.ndjson }} ]\n",
        rule("{ source: [x] }", ok_target)
    );
    assert!(load(&two).unwrap().contains("unique"));
    assert!(load(&rule("{ source: [x] }", ok_target)).is_none());
}

/// The local bus behind a counter of `put_page` calls.
#[derive(Debug)]
struct CountingPages {
    bus: LocalBus,
    pages: std::sync::Mutex<Vec<usize>>,
}

#[async_trait]
impl EventBus for CountingPages {
    async fn put_events(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        self.bus.put_events(events).await
    }

    fn page_size(&self) -> usize {
        self.bus.page_size()
    }

    async fn put_page(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        self.pages.lock().unwrap().push(events.len());
        self.bus.put_page(events).await
    }
}

async fn commit_many(store: &SqliteStore, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("p{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    commit(store, &refs).await;
    ids.iter().map(|id| format!("{id}/1")).collect()
}

#[tokio::test]
async fn the_relay_hands_the_local_bus_pages_of_a_thousand_each_delivered_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = CountingPages {
        bus: bus_from_yaml(
            r#"
events:
  local:
    ndjson: all.ndjson
    rules:
      - name: even
        pattern: '{"detail": {"id": [{"wildcard": "p*0"}]}}'
        targets: [ { ndjson: even.ndjson } ]
"#,
            dir.path(),
        ),
        pages: std::sync::Mutex::new(Vec::new()),
    };
    let store = SqliteStore::open_in_memory().unwrap();
    let expected = commit_many(&store, 2_345).await;
    let report = relay_outbox(&store, &bus).await.unwrap();
    assert_eq!((report.delivered, report.failed), (2_345, 0));
    assert_eq!(*bus.pages.lock().unwrap(), vec![1_000, 1_000, 345]);
    assert_eq!(ids(&lines(&dir.path().join("all.ndjson"))), expected);
    // Rule matching is per event, as with calls of 10.
    let even: Vec<String> = expected
        .iter()
        .filter(|id| id.ends_with("0/1"))
        .cloned()
        .collect();
    assert_eq!(ids(&lines(&dir.path().join("even.ndjson"))), even);
    assert_eq!(
        bus.bus.archive().list(None, 0, 10_000).unwrap().len(),
        2_345
    );
    assert!(store.pending(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_crash_after_a_whole_page_reached_the_file_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "events:\n  local:\n    ndjson: all.ndjson\n";
    let db = dir.path().join("store.db");
    let expected = {
        let store = SqliteStore::open(&db).unwrap();
        let expected = commit_many(&store, 1_500).await;
        // A full page (hundreds of KB, more than the first tail window read at open) reached
        // the file; the process died before the ledger and the outbox marks.
        let page: Vec<Value> = store
            .pending(LOCAL_PAGE_EVENTS)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.delivered(LOCAL_ACCOUNT, LOCAL_REGION))
            .collect();
        let writer = NdjsonWriter::open(&dir.path().join("all.ndjson")).unwrap();
        let refs: Vec<&Value> = page.iter().collect();
        assert_eq!(writer.append(&refs).unwrap(), LOCAL_PAGE_EVENTS);
        expected
    };
    let store = SqliteStore::open(&db).unwrap();
    let bus = bus_from_yaml(yaml, dir.path());
    let report = relay_outbox(&store, &bus).await.unwrap();
    assert_eq!(report.delivered, 1_500);
    assert_eq!(ids(&lines(&dir.path().join("all.ndjson"))), expected);
}

#[tokio::test]
async fn a_page_larger_than_the_local_page_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_from_yaml("events:\n  local:\n    ndjson: all.ndjson\n", dir.path());
    let events: Vec<_> = (0..=LOCAL_PAGE_EVENTS)
        .map(|i| event(ChangeKind::Created, "Patient", &i.to_string(), "1"))
        .collect();
    assert!(matches!(
        bus.put_page(&events).await,
        Err(BusError::Invalid(_))
    ));
    assert!(bus.archive().list(None, 0, 10).unwrap().is_empty());
}

#[tokio::test]
async fn an_event_put_again_reaches_no_target_twice_and_a_new_one_beside_it_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedHttp::statuses(vec![200; 8]);
    let bus = bus_from_yaml(
        &format!(
            r#"
events:
  local:
    rules:
      - name: hook
        pattern: {{ source: [fhir-unify] }}
        targets: [ {{ webhook: {{ url: "{}", max_attempts: 1, initial_backoff_ms: 1 }} }} ]
"#,
            server.endpoint
        ),
        dir.path(),
    );
    let events: Vec<ChangeEvent> = (0..3)
        .map(|i| event(ChangeKind::Created, "Patient", &format!("p{i}"), "1"))
        .collect();
    let r = bus.put_events(&events[..2]).await.unwrap();
    assert_eq!(accepted(&r), 2, "{r:?}");
    // p0 and p1 are archived already (their ledger is read), p2 is new (its ledger is not).
    let r = bus.put_events(&events).await.unwrap();
    assert_eq!(accepted(&r), 3, "{r:?}");
    let bodies: Vec<Value> = server.accepted_bodies().into_iter().map(checked).collect();
    assert_eq!(ids(&bodies), ["p0/1", "p1/1", "p2/1"]);
    assert_eq!(bus.archive().list(None, 0, 10).unwrap().len(), 3);
}

#[tokio::test]
async fn each_ndjson_line_is_the_archived_text_and_a_put_again_adds_neither() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_from_yaml("events:\n  local:\n    ndjson: all.ndjson\n", dir.path());
    let events = [
        event(ChangeKind::Created, "Patient", "a", "1"),
        event(ChangeKind::Updated, "Patient", "a", "2"),
    ];
    bus.put_events(&events).await.unwrap();
    // Serialized once: the file's lines are the archive's stored texts, byte for byte.
    let archived: Vec<String> = rusqlite::Connection::open(dir.path().join("events.db"))
        .unwrap()
        .prepare("SELECT envelope FROM archive ORDER BY position")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let file = std::fs::read_to_string(dir.path().join("all.ndjson")).unwrap();
    assert_eq!(file.lines().collect::<Vec<_>>(), archived);
    assert_eq!(ids(&lines(&dir.path().join("all.ndjson"))), ["a/1", "a/2"]);
    // Redelivered (a crash after the write, before the outbox was marked): no new archive
    // row, no new line.
    bus.put_events(&events).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("all.ndjson")).unwrap(),
        file
    );
    assert_eq!(bus.archive().list(None, 0, 100).unwrap().len(), 2);
}
