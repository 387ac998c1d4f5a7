//! Distributed Map over a local object store: ItemReader (JSON, JSON Lines, CSV, listing),
//! ReaderConfig, ItemBatcher, ResultWriter and their failures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use asl::objects::{DirObjectStore, ObjectStore};
use asl::{Engine, ExecutionResult, ExecutionStatus, StateMachine, TaskRegistry, TestClock};
use serde_json::{Value, json};

fn map_def(extra: Value) -> Value {
    let mut map = json!({
        "Type": "Map",
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            "StartAt": "P",
            "States": {"P": {"Type": "Pass", "End": true}}
        },
        "End": true
    });
    for (k, v) in extra.as_object().unwrap() {
        map[k] = v.clone();
    }
    json!({"StartAt": "M", "States": {"M": map}})
}

async fn run(store: &Arc<DirObjectStore>, def: Value, input: Value) -> ExecutionResult {
    let mut reg = TaskRegistry::new();
    reg.set_object_store(store.clone());
    let engine = Engine::new(reg, Arc::new(TestClock::new()));
    let sm = StateMachine::parse(&def.to_string()).unwrap();
    engine.start_execution(&sm, Some("run"), input).await
}

async fn store_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<DirObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirObjectStore::new(dir.path()));
    for (key, body) in files {
        store
            .put("bucket", key, body.as_bytes().to_vec())
            .await
            .unwrap();
    }
    (dir, store)
}

fn reader(input_type: &str, key: &str, config: Value) -> Value {
    let mut cfg = json!({"InputType": input_type});
    for (k, v) in config.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    json!({"ItemReader": {
        "Resource": "arn:aws:states:::s3:getObject",
        "ReaderConfig": cfg,
        "Parameters": {"Bucket": "bucket", "Key.$": key}
    }})
}

#[tokio::test]
async fn reads_json_jsonl_and_csv_items() {
    let (_d, store) = store_with(&[
        ("a.json", r#"[{"x": 1}, {"x": 2}, {"x": 3}]"#),
        ("a.jsonl", "{\"x\": 1}\n\n[2]\n\"three\"\n"),
        ("a.csv", "id,name\n1,Ann\n2,\"Bo, Jr\"\n"),
        ("b.csv", "1|Ann\n2|Bo\n"),
    ])
    .await;
    let r = run(
        &store,
        map_def(reader("JSON", "$.key", json!({}))),
        json!({"key": "a.json"}),
    )
    .await;
    assert_eq!(r.output, Some(json!([{"x": 1}, {"x": 2}, {"x": 3}])));
    let r = run(
        &store,
        map_def(reader("JSON", "$.key", json!({"MaxItems": 2}))),
        json!({"key": "a.json"}),
    )
    .await;
    assert_eq!(r.output, Some(json!([{"x": 1}, {"x": 2}])));
    let r = run(
        &store,
        map_def(reader("JSONL", "$.key", json!({}))),
        json!({"key": "a.jsonl"}),
    )
    .await;
    assert_eq!(r.output, Some(json!([{"x": 1}, [2], "three"])));
    let r = run(
        &store,
        map_def(reader("CSV", "$.key", json!({}))),
        json!({"key": "a.csv"}),
    )
    .await;
    assert_eq!(
        r.output,
        Some(json!([{"id": "1", "name": "Ann"}, {"id": "2", "name": "Bo, Jr"}]))
    );
    let given =
        json!({"CSVHeaderLocation": "GIVEN", "CSVHeaders": ["id", "who"], "CSVDelimiter": "PIPE"});
    let r = run(
        &store,
        map_def(reader("CSV", "$.key", given)),
        json!({"key": "b.csv"}),
    )
    .await;
    assert_eq!(
        r.output,
        Some(json!([{"id": "1", "who": "Ann"}, {"id": "2", "who": "Bo"}]))
    );
}

#[tokio::test]
async fn lists_objects_with_a_prefix() {
    let (_d, store) =
        store_with(&[("in/b.txt", "bb"), ("in/a.txt", "a"), ("out/c.txt", "c")]).await;
    let def = map_def(json!({"ItemReader": {
        "Resource": "arn:aws:states:::s3:listObjectsV2",
        "Parameters": {"Bucket": "bucket", "Prefix": "in/"}
    }, "ItemSelector": {"key.$": "$$.Map.Item.Value.Key", "size.$": "$$.Map.Item.Value.Size"}}));
    let r = run(&store, def, json!({})).await;
    assert_eq!(
        r.output,
        Some(json!([{"key": "in/a.txt", "size": 1}, {"key": "in/b.txt", "size": 2}]))
    );
}

#[tokio::test]
async fn batches_items_with_batch_input() {
    let (_d, store) = store_with(&[("n.json", "[1, 2, 3, 4, 5]")]).await;
    let mut def = map_def(reader("JSON", "$.key", json!({})));
    def["States"]["M"]["ItemBatcher"] =
        json!({"MaxItemsPerBatch": 2, "BatchInput": {"run.$": "$.run"}});
    let r = run(&store, def, json!({"key": "n.json", "run": 7})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(
        r.output,
        Some(json!([
            {"BatchInput": {"run": 7}, "Items": [1, 2]},
            {"BatchInput": {"run": 7}, "Items": [3, 4]},
            {"BatchInput": {"run": 7}, "Items": [5]}
        ]))
    );
}

#[tokio::test]
async fn result_writer_writes_manifest_and_result_files() {
    let (_d, store) = store_with(&[("n.json", "[1, 2, 0]")]).await;
    let mut def = map_def(reader("JSON", "$.key", json!({})));
    let m = &mut def["States"]["M"];
    m["ItemProcessor"]["States"] = json!({
        "C": {"Type": "Choice", "Choices": [{"Variable": "$", "NumericEquals": 0, "Next": "F"}], "Default": "P"},
        "P": {"Type": "Pass", "Parameters": {"v.$": "$"}, "End": true},
        "F": {"Type": "Fail", "Error": "Zero", "Cause": "item was zero"}
    });
    m["ItemProcessor"]["StartAt"] = json!("C");
    m["ToleratedFailureCount"] = json!(1);
    m["ResultWriter"] = json!({"Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": "bucket", "Prefix": "results"}});
    let r = run(&store, def, json!({"key": "n.json"})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    let out = r.output.unwrap();
    let run_arn = out["MapRunArn"].as_str().unwrap();
    assert!(run_arn.contains(":mapRun:"), "{run_arn}");
    let key = out["ResultWriterDetails"]["Key"].as_str().unwrap();
    assert!(
        key.starts_with("results/") && key.ends_with("/manifest.json"),
        "{key}"
    );
    assert_eq!(out["ResultWriterDetails"]["Bucket"], json!("bucket"));
    let manifest: Value = serde_json::from_slice(&store.get("bucket", key).await.unwrap()).unwrap();
    assert_eq!(manifest["MapRunArn"], json!(run_arn));
    let ok_key = manifest["ResultFiles"]["SUCCEEDED"][0]["Key"]
        .as_str()
        .unwrap();
    let ok: Value = serde_json::from_slice(&store.get("bucket", ok_key).await.unwrap()).unwrap();
    let outputs: Vec<&str> = ok
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Output"].as_str().unwrap())
        .collect();
    assert_eq!(outputs.len(), 2);
    assert!(outputs.contains(&r#"{"v":1}"#) && outputs.contains(&r#"{"v":2}"#));
    let failed_key = manifest["ResultFiles"]["FAILED"][0]["Key"]
        .as_str()
        .unwrap();
    let failed: Value =
        serde_json::from_slice(&store.get("bucket", failed_key).await.unwrap()).unwrap();
    assert_eq!(failed[0]["Status"], json!("FAILED"));
    assert_eq!(failed[0]["Error"], json!("Zero"));
    assert_eq!(failed[0]["Input"], json!("0"));
}

#[tokio::test]
async fn reader_failures_are_item_reader_failed() {
    let (_d, store) = store_with(&[
        ("obj.json", r#"{"not": "an array"}"#),
        ("bad.jsonl", "{\"a\": 1}\n{oops\n"),
        ("ragged.csv", "a,b\n1\n"),
    ])
    .await;
    for (ty, key, needle) in [
        ("JSON", "missing.json", "does not exist"),
        ("JSON", "obj.json", "does not contain a JSON array"),
        ("JSONL", "bad.jsonl", "line 2"),
        ("CSV", "ragged.csv", "has 1 fields"),
        ("JSON", "../escape.json", "invalid bucket or key"),
    ] {
        let r = run(
            &store,
            map_def(reader(ty, "$.key", json!({}))),
            json!({"key": key}),
        )
        .await;
        assert_eq!(r.status, ExecutionStatus::Failed, "{key}");
        assert_eq!(r.error.as_deref(), Some("States.ItemReaderFailed"), "{key}");
        assert!(
            r.cause.as_deref().unwrap().contains(needle),
            "{key}: {:?}",
            r.cause
        );
    }
    // No store at all.
    let engine = Engine::new(TaskRegistry::new(), Arc::new(TestClock::new()));
    let sm = StateMachine::parse(&map_def(reader("JSON", "$.key", json!({}))).to_string()).unwrap();
    let r = engine.start_execution(&sm, None, json!({"key": "a"})).await;
    assert_eq!(r.error.as_deref(), Some("States.ItemReaderFailed"));
}

#[tokio::test]
async fn result_writer_failure_is_result_writer_failed() {
    let (_d, store) = store_with(&[("n.json", "[1]")]).await;
    let mut def = map_def(reader("JSON", "$.key", json!({})));
    def["States"]["M"]["ResultWriter"] = json!({"Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": "../up", "Prefix": "p"}});
    let r = run(&store, def, json!({"key": "n.json"})).await;
    assert_eq!(r.error.as_deref(), Some("States.ResultWriterFailed"));
}

#[test]
fn distributed_fields_are_checked() {
    let inline = json!({"StartAt": "M", "States": {"M": {"Type": "Map", "End": true,
        "ItemReader": {"Resource": "arn:aws:states:::s3:listObjectsV2", "Parameters": {"Bucket": "b"}},
        "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}}}});
    let e = StateMachine::parse(&inline.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ItemReader") && e.contains("DISTRIBUTED"), "{e}");
    for (field, value, needle) in [
        (
            "ItemReader",
            json!({"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "XML"}}),
            "InputType",
        ),
        (
            "ItemReader",
            json!({"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "CSV", "CSVHeaderLocation": "GIVEN"}}),
            "CSVHeaders",
        ),
        (
            "ItemReader",
            json!({"Resource": "arn:aws:states:::dynamodb:scan"}),
            "Resource",
        ),
        (
            "ItemReader",
            json!({"Resource": "arn:aws:states:::s3:listObjectsV2", "Bogus": 1}),
            "Bogus",
        ),
        ("ItemBatcher", json!({"BatchInput": {}}), "MaxItemsPerBatch"),
        (
            "ResultWriter",
            json!({"Resource": "arn:aws:states:::s3:getObject", "Parameters": {}}),
            "putObject",
        ),
    ] {
        let def = map_def(json!({ field: value }));
        let e = StateMachine::parse(&def.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{field}: {e}");
    }
}

/// A JSONata machine whose distributed Map reads `Key` from the input through `Arguments`,
/// with JSONata ReaderConfig and ItemBatcher fields.
fn jsonata_map(extra: Value) -> Value {
    let mut def = map_def(json!({
        "ItemReader": {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": {"InputType": "JSON", "MaxItems": "{% $states.input.max %}"},
            "Arguments": {"Bucket": "bucket", "Key": "{% $states.input.key %}"}
        }
    }));
    def["QueryLanguage"] = json!("JSONata");
    for (k, v) in extra.as_object().unwrap() {
        def["States"]["M"][k] = v.clone();
    }
    def
}

#[tokio::test]
async fn jsonata_item_reader_and_batcher() {
    let (_d, store) = store_with(&[("n.json", "[1, 2, 3, 4, 5]")]).await;
    let r = run(
        &store,
        jsonata_map(json!({})),
        json!({"key": "n.json", "max": 4}),
    )
    .await;
    assert_eq!(r.output, Some(json!([1, 2, 3, 4])), "{r:?}");
    let r = run(
        &store,
        jsonata_map(json!({"ItemBatcher": {
            "MaxItemsPerBatch": "{% $states.input.per %}",
            "BatchInput": {"from": "{% $states.input.key %}"}
        }})),
        json!({"key": "n.json", "max": 5, "per": 2}),
    )
    .await;
    assert_eq!(
        r.output,
        Some(json!([
            {"BatchInput": {"from": "n.json"}, "Items": [1, 2]},
            {"BatchInput": {"from": "n.json"}, "Items": [3, 4]},
            {"BatchInput": {"from": "n.json"}, "Items": [5]}
        ])),
        "{r:?}"
    );
    // A JSONata field of the wrong type fails the state with QueryEvaluationError, naming it.
    let r = run(
        &store,
        jsonata_map(json!({"ItemBatcher": {"MaxItemsPerBatch": "{% 'two' %}"}})),
        json!({"key": "n.json", "max": 5}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("States.QueryEvaluationError"));
    let cause = r.cause.unwrap();
    assert!(
        cause.contains("'M'") && cause.contains("MaxItemsPerBatch"),
        "{cause}"
    );
    let r = run(&store, jsonata_map(json!({})), json!({"max": 5})).await;
    assert_eq!(r.error.as_deref(), Some("States.QueryEvaluationError"));
    assert!(r.cause.unwrap().contains("ItemReader/Arguments/Key"));
}

#[test]
fn jsonata_and_jsonpath_payload_fields_are_not_mixed() {
    let mut def = jsonata_map(json!({}));
    def["States"]["M"]["ItemReader"]["Parameters"] = json!({"Bucket": "b"});
    let e = StateMachine::parse(&def.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ItemReader/Parameters") && e.contains("JSONata"),
        "{e}"
    );
    let mut def = map_def(reader("JSON", "$.key", json!({})));
    def["States"]["M"]["ResultWriter"] = json!({"Resource": "arn:aws:states:::s3:putObject",
        "Arguments": {"Bucket": "b"}});
    let e = StateMachine::parse(&def.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ResultWriter/Arguments"), "{e}");
    let def = jsonata_map(json!({"ItemBatcher": {"MaxItemsPerBatch": "{% ( %}"}}));
    let e = StateMachine::parse(&def.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'M'") && e.contains("ItemBatcher/MaxItemsPerBatch"),
        "{e}"
    );
    for (writer, field) in [
        (json!({}), "ResultWriter"),
        (
            json!({"WriterConfig": {"OutputType": "CSV", "Transformation": "NONE"}}),
            "OutputType",
        ),
        (
            json!({"WriterConfig": {"OutputType": "JSON", "Transformation": "SOME"}}),
            "Transformation",
        ),
        (
            json!({"WriterConfig": {"OutputType": "JSON", "Transformation": "NONE", "X": 1}}),
            "WriterConfig/X",
        ),
        (
            json!({"Resource": "arn:aws:states:::s3:putObject"}),
            "ResultWriter/Parameters",
        ),
    ] {
        let mut def = map_def(reader("JSON", "$.key", json!({})));
        def["States"]["M"]["ResultWriter"] = writer;
        let e = StateMachine::parse(&def.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[tokio::test]
async fn writer_config_shapes_the_state_output() {
    let (_d, store) = store_with(&[("n.json", "[[1, 2], 3, [4]]")]).await;
    let with = |config: Value| {
        let mut def = map_def(reader("JSON", "$.key", json!({})));
        def["States"]["M"]["ResultWriter"] = json!({"WriterConfig": config});
        def
    };
    let r = run(
        &store,
        with(json!({"OutputType": "JSON", "Transformation": "FLATTEN"})),
        json!({"key": "n.json"}),
    )
    .await;
    assert_eq!(r.output, Some(json!([1, 2, 3, 4])), "{r:?}");
    let r = run(
        &store,
        with(json!({"OutputType": "JSON", "Transformation": "COMPACT"})),
        json!({"key": "n.json"}),
    )
    .await;
    assert_eq!(r.output, Some(json!([[1, 2], 3, [4]])));
    let r = run(
        &store,
        with(json!({"OutputType": "JSON", "Transformation": "NONE"})),
        json!({"key": "n.json"}),
    )
    .await;
    let out = r.output.unwrap();
    assert_eq!(out[1]["Status"], json!("SUCCEEDED"));
    assert_eq!(out[1]["Output"], json!("3"));
    assert_eq!(out[0]["Input"], json!("[1,2]"));
}

#[tokio::test]
async fn writer_config_with_export_writes_json_lines() {
    let (_d, store) = store_with(&[("n.json", "[[1, 2], 3]")]).await;
    let mut def = jsonata_map(json!({}));
    def["States"]["M"]["ResultWriter"] = json!({
        "Resource": "arn:aws:states:::s3:putObject",
        "Arguments": {"Bucket": "bucket", "Prefix": "{% $states.input.out %}"},
        "WriterConfig": {"OutputType": "JSONL", "Transformation": "FLATTEN"}
    });
    let r = run(
        &store,
        def,
        json!({"key": "n.json", "max": 5, "out": "exported"}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    let key = r.output.unwrap()["ResultWriterDetails"]["Key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with("exported/"), "{key}");
    let manifest: Value =
        serde_json::from_slice(&store.get("bucket", &key).await.unwrap()).unwrap();
    let ok_key = manifest["ResultFiles"]["SUCCEEDED"][0]["Key"]
        .as_str()
        .unwrap();
    assert!(ok_key.ends_with("SUCCEEDED_0.jsonl"), "{ok_key}");
    let body = String::from_utf8(store.get("bucket", ok_key).await.unwrap()).unwrap();
    let mut lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|v| v.as_i64());
    assert_eq!(lines, vec![json!(1), json!(2), json!(3)]);
}
