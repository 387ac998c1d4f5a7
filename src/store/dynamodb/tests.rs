//! The parts of the DynamoDB store that need no table: planning transactions, item sizes,
//! keys, and decoding stream images. The store against a table (moto) is in
//! `tests/store_suite.rs`.

use serde_json::json;

use super::*;
use crate::model::RecordKey;

fn target(id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: id.into(),
    }
}

fn lineage(seq: &str) -> Lineage {
    Lineage {
        source: "app".into(),
        entity: "patients".into(),
        key: RecordKey::from_pairs([("pk", json!("p-1"))]),
        sequence: Sequence::parse(seq).unwrap(),
        observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
    }
}

fn upsert(id: &str, family: &str, seq: &str) -> ResourceChange {
    ResourceChange {
        target: target(id),
        op: ResourceOp::Upsert {
            resource: json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
        },
        lineage: lineage(seq),
    }
}

fn now() -> DateTime<Utc> {
    "2025-01-01T00:00:00.000Z".parse().unwrap()
}

/// Plans every change the way `apply_all` does, as if every transaction committed.
fn plan_all(changes: &[ResourceChange]) -> Vec<Segment> {
    let prepared: Vec<_> = changes
        .iter()
        .map(|c| prepare(c, now(), true).unwrap())
        .collect();
    let mut state = HashMap::new();
    let mut segments = Vec::new();
    let mut start = 0;
    while start < prepared.len() {
        let (segment, end, next) = plan(&prepared[start..], &state, now()).unwrap();
        assert!(end > 0, "a plan always makes progress");
        state.extend(next);
        start += end;
        segments.push(segment);
    }
    segments
}

#[test]
fn creates_are_split_into_transactions_of_at_most_100_items() {
    let changes: Vec<_> = (0..500)
        .map(|i| upsert(&format!("p{i}"), "A", "1"))
        .collect();
    let segments = plan_all(&changes);
    // Per created resource: current, history and type history items, and 4 index items
    // (_all, _lastUpdated, name, family): 14 resources (98 items) per transaction.
    let per_resource = 3 + 4;
    let per_segment = MAX_TRANSACTION_ITEMS / per_resource;
    assert_eq!(segments.len(), 500_usize.div_ceil(per_segment));
    for (i, s) in segments.iter().enumerate() {
        let items = s.rewritten.len() + s.history.len() + s.index_len;
        let resources = if i + 1 < segments.len() {
            per_segment
        } else {
            500 - per_segment * (segments.len() - 1)
        };
        assert_eq!(items, resources * per_resource);
        assert!(s.rewritten.values().all(|rev| *rev == 0));
        assert_eq!(s.outcomes.len(), resources);
        assert!(
            s.index
                .values()
                .all(|w| w.deletes.is_empty() && w.puts.len() == 4)
        );
    }
    let outcomes: Vec<_> = segments.iter().flat_map(|s| &s.outcomes).collect();
    assert_eq!(outcomes.len(), 500);
    assert!(outcomes.iter().all(|o| o.action == PublishAction::Created));
}

#[test]
fn versions_of_one_resource_share_its_current_item_and_split_in_order() {
    let changes: Vec<_> = (1..=150)
        .map(|i| upsert("p1", &format!("V{i}"), &i.to_string()))
        .collect();
    let segments = plan_all(&changes);
    // One current item, the index of the segment's last version (4 items; after the first
    // segment also 2 deletes: the old name and family, as _all and _lastUpdated keep their
    // keys at one clock time), and two items per version (history, type history): 47
    // versions, then 46 a segment, each conditioned on the rev the one before wrote.
    let first = (MAX_TRANSACTION_ITEMS - 1 - 4) / 2;
    let later = (MAX_TRANSACTION_ITEMS - 1 - 6) / 2;
    let sizes: Vec<usize> = segments.iter().map(|s| s.history.len() / 2).collect();
    assert_eq!(sizes, [first, later, later, 150 - first - 2 * later]);
    assert_eq!(segments[0].rewritten.get(&target("p1")), Some(&0));
    assert_eq!(
        segments[1].rewritten.get(&target("p1")),
        Some(&(first as u64))
    );
    for s in &segments[1..] {
        let w = &s.index[&target("p1")];
        assert_eq!((w.puts.len(), w.deletes.len()), (4, 2));
    }
    let versions: Vec<_> = segments
        .iter()
        .flat_map(|s| &s.outcomes)
        .map(|o| o.version_id.clone().unwrap())
        .collect();
    let expected: Vec<_> = (1..=150).map(|v: i32| v.to_string()).collect();
    assert_eq!(versions, expected);
}

#[test]
fn large_resources_are_split_by_the_4_mb_limit() {
    // ~300 KB each: two items per resource, so at most 6 resources per 4 MB transaction.
    let big = "x".repeat(300 * 1024);
    let changes: Vec<_> = (0..10)
        .map(|i| upsert(&format!("p{i}"), &big, "1"))
        .collect();
    let segments = plan_all(&changes);
    assert!(segments.len() >= 2);
    for s in &segments {
        let current: usize = s.rewritten.len() * (300 * 1024);
        assert!(s.history_bytes + current <= MAX_TRANSACTION_BYTES);
    }
    assert_eq!(segments.iter().map(|s| s.outcomes.len()).sum::<usize>(), 10);
}

#[test]
fn a_resource_too_large_for_an_item_is_refused_by_name() {
    let change = upsert("p1", &"x".repeat(MAX_ITEM_BYTES), "1");
    let Err(err) = prepare(&change, now(), true) else {
        panic!("a 400 KB name was accepted");
    };
    match err {
        StoreError::Invalid { target, reason } => {
            assert_eq!(target, "Patient/p1");
            assert!(reason.contains("at most 409600 bytes"), "{reason}");
        }
        other => panic!("{other}"),
    }
    // Just under the limit is accepted.
    assert!(
        prepare(
            &upsert("p1", &"x".repeat(MAX_ITEM_BYTES - 2048), "1"),
            now(),
            true
        )
        .is_ok()
    );
}

#[test]
fn stale_and_replayed_changes_write_nothing_and_mark_moves_rewrite_current_only() {
    let prepared = [upsert("p1", "A", "5")];
    let first: Vec<_> = prepared
        .iter()
        .map(|c| prepare(c, now(), true).unwrap())
        .collect();
    let (segment, _, state) = plan(&first, &HashMap::new(), now()).unwrap();
    // The version's history item and its type history pointer.
    assert_eq!(segment.history.len(), 2);
    assert_eq!(segment.index_len, 4);
    let mut state: HashMap<_, _> = state
        .into_iter()
        .map(|(t, mut c)| {
            // As read back after the commit.
            c.rev = 1;
            (t, c)
        })
        .collect();
    for (change, action, writes) in [
        (upsert("p1", "B", "4"), PublishAction::Stale, 0),
        (upsert("p1", "A", "5"), PublishAction::Unchanged, 0),
        (upsert("p1", "A", "6"), PublishAction::Unchanged, 1),
    ] {
        let prepared = [prepare(&change, now(), true).unwrap()];
        let (segment, _, next) = plan(&prepared, &state, now()).unwrap();
        assert_eq!(segment.outcomes[0].action, action);
        assert_eq!(segment.outcomes[0].version_id.as_deref(), Some("1"));
        assert!(segment.history.is_empty());
        assert!(segment.index.is_empty(), "no version, no index write");
        assert_eq!(segment.rewritten.len(), writes, "{action:?}");
        if writes > 0 {
            assert_eq!(segment.rewritten.get(&target("p1")), Some(&1));
            let after = &next[&target("p1")];
            assert_eq!(after.rev, 2);
            assert_eq!(after.marks.values().next().unwrap().as_str(), "6");
            state.insert(target("p1"), after.clone());
        }
    }
}

#[test]
fn history_sort_keys_sort_as_numbers() {
    assert_eq!(history_sk(1), "v#0000000001");
    let mut keys: Vec<_> = [10, 9, 100, 1, 11].iter().map(|v| history_sk(*v)).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "v#0000000001",
            "v#0000000009",
            "v#0000000010",
            "v#0000000011",
            "v#0000000100"
        ]
    );
}

#[test]
fn marks_of_different_source_entities_never_collide() {
    let mut a = lineage("1");
    a.source = "a/b".into();
    a.entity = "c".into();
    let mut b = lineage("1");
    b.source = "a".into();
    b.entity = "b/c".into();
    assert_ne!(mark_key(&a), mark_key(&b));
}

#[test]
fn current_items_round_trip() {
    let current = Current {
        rev: 7,
        version: 3,
        last_updated: Some(now()),
        deleted: false,
        content: Some(r#"{"resourceType":"Patient","id":"p1","x":1.50}"#.into()),
        lineage: Some(serde_json::to_string(&lineage("12345678901234567890123")).unwrap()),
        marks: BTreeMap::from([(
            mark_key(&lineage("1")),
            Sequence::parse("12345678901234567890123456789012345678901234567890").unwrap(),
        )]),
        ix: vec![("ix#Patient#_all".into(), "p1".into())],
    };
    let item = current_item(&target("p1"), &current);
    assert_eq!(parse_current(&target("p1"), &item).unwrap(), current);
}

#[test]
fn corrupt_items_are_corrupt_errors_naming_the_resource() {
    let good = current_item(&target("p1"), &Current::default());
    for (name, value) in [
        ("rev", AttributeValue::S("1".into())),
        ("version", AttributeValue::N("x".into())),
        ("deleted", AttributeValue::N("1".into())),
        ("lastUpdated", AttributeValue::S("yesterday".into())),
        (
            "marks",
            AttributeValue::M(HashMap::from([(
                "k".into(),
                AttributeValue::S("-1".into()),
            )])),
        ),
    ] {
        let mut item = good.clone();
        item.insert(name.into(), value);
        let err = parse_current(&target("p1"), &item).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("Patient/p1")),
            "{name}: {err}"
        );
    }
    let err = stored_version(&target("p1"), 2, Some(now()), false, None, None).unwrap_err();
    assert!(err.to_string().contains("without content"), "{err}");
    let err = stored_version(&target("p1"), 2, Some(now()), false, Some("{"), None).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
}

fn image(item: &HashMap<String, AttributeValue>) -> serde_dynamo::Item {
    item.iter()
        .map(|(k, v)| {
            let v = match v {
                AttributeValue::S(s) => serde_dynamo::AttributeValue::S(s.clone()),
                AttributeValue::N(n) => serde_dynamo::AttributeValue::N(n.clone()),
                AttributeValue::Bool(b) => serde_dynamo::AttributeValue::Bool(*b),
                AttributeValue::M(_) => serde_dynamo::AttributeValue::M(HashMap::new()),
                AttributeValue::L(_) => serde_dynamo::AttributeValue::L(Vec::new()),
                other => panic!("{other:?}"),
            };
            (k.clone(), v)
        })
        .collect::<HashMap<_, _>>()
        .into()
}

#[test]
fn stream_images_of_history_items_are_the_outbox_events() {
    let l = lineage("42");
    let lineage_text = serde_json::to_string(&l).unwrap();
    for (action, kind) in [
        (PublishAction::Created, ChangeKind::Created),
        (PublishAction::Updated, ChangeKind::Updated),
        (PublishAction::Deleted, ChangeKind::Deleted),
    ] {
        let content = (action != PublishAction::Deleted).then_some("{}");
        let item = history_item(&target("p1"), 12, now(), action, content, &lineage_text);
        let event = change_event_from_stream_image(&image(&item))
            .unwrap()
            .unwrap();
        assert_eq!(event, change_event(kind, &target("p1"), "12", now(), &l));
    }
    // A current item carries no event.
    let current = current_item(&target("p1"), &Current::default());
    assert_eq!(
        change_event_from_stream_image(&image(&current)).unwrap(),
        None
    );
}

#[test]
fn bad_stream_images_are_corrupt_errors() {
    let item = history_item(
        &target("p1"),
        3,
        now(),
        PublishAction::Updated,
        Some("{}"),
        "{}",
    );
    let mut no_sk = image(&item);
    no_sk.remove(SK);
    let mut wrong_version = image(&item);
    wrong_version.insert(
        "version".into(),
        serde_dynamo::AttributeValue::N("4".into()),
    );
    let mut bad_action = image(&item);
    bad_action.insert(
        "action".into(),
        serde_dynamo::AttributeValue::S("moved".into()),
    );
    let bad_lineage = image(&item);
    for (case, image) in [
        ("no sort key", no_sk),
        ("version", wrong_version),
        ("action", bad_action),
        ("lineage", bad_lineage),
    ] {
        let err = change_event_from_stream_image(&image).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{case}: {err}");
    }
}

#[test]
fn item_sizes_count_names_and_values() {
    let item = HashMap::from([
        ("ab".to_owned(), AttributeValue::S("xyz".into())),
        ("n".to_owned(), AttributeValue::N("1234".into())),
        ("b".to_owned(), AttributeValue::Bool(true)),
        (
            "m".to_owned(),
            AttributeValue::M(HashMap::from([("k".into(), AttributeValue::S("v".into()))])),
        ),
    ]);
    // 2+3, 1+3, 1+1, 1+(3+1+1+1)
    assert_eq!(
        check_item_size(&target("p1"), &item).unwrap(),
        5 + 4 + 2 + 7
    );
}
