//! The Transfer source on its fixture files (`tests/fixtures/transfer/`): the events that
//! announce uploads, every format and wrapping, every kind of bad input (each refused with
//! the file and the row, the rest of the file read on), and an upload end to end through
//! `ingest-transfer`, `unify` and the store.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::local::LocalRuntime;
use fhir_unify::model::{RecordKey, Rejection, ResourceRef, SourceChange, Stage};
use fhir_unify::objects::{LocalBuckets, ObjectStore};
use fhir_unify::sources::Decoded;
use fhir_unify::sources::transfer::format::{FixedWidthFormat, NdjsonFormat, XmlFormat};
use fhir_unify::sources::transfer::{
    CsvFormat, Encoding, FileFormat, FileReport, LoadMode, TransferTarget, read_object, uploads,
};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transfer")
}

fn store() -> Arc<dyn ObjectStore> {
    LocalBuckets::new()
        .with_bucket("landing", fixtures())
        .shared()
}

fn target(format: FileFormat) -> TransferTarget {
    TransferTarget {
        source: "eligibility".into(),
        entity: "members".into(),
        key: vec!["member_id".into()],
        format,
        load: LoadMode::Increment,
        pattern: "*".into(),
        layout: None,
        pgp: None,
    }
}

fn csv() -> TransferTarget {
    target(FileFormat::Csv(CsvFormat::default()))
}

fn with_key(mut t: TransferTarget) -> TransferTarget {
    t.pgp = Some((fixtures().join("keys/test-only-secret.asc"), None));
    t
}

struct Read {
    report: FileReport,
    changes: Vec<SourceChange>,
    rejected: Vec<Rejection>,
}

fn read(key: &str, t: &TransferTarget) -> Read {
    let mut changes = Vec::new();
    let mut rejected = Vec::new();
    let time = Utc.with_ymd_and_hms(2026, 3, 2, 8, 15, 30).unwrap();
    let report = read_object(store(), "landing", key, t, time, &mut |d| match d {
        Decoded::Change(c) => changes.push(c),
        Decoded::Rejected(r) => rejected.push(r),
    })
    .unwrap();
    assert_eq!(report.changes, changes.len() as u64);
    assert_eq!(report.rejected, rejected.len() as u64);
    for r in &rejected {
        assert_eq!(r.stage, Stage::Ingest);
        assert_eq!(r.outcome["resourceType"], "OperationOutcome");
        assert!(
            r.record.contains(&format!("s3://landing/{key}")),
            "names the file: {}",
            r.record
        );
        assert!(r.change.is_none());
    }
    Read {
        report,
        changes,
        rejected,
    }
}

fn ids(changes: &[SourceChange]) -> Vec<&str> {
    changes
        .iter()
        .map(|c| c.key.0["member_id"].as_str().unwrap())
        .collect()
}

fn reasons(rejected: &[Rejection]) -> Vec<String> {
    rejected
        .iter()
        .map(|r| format!("{} | {}", r.record, r.outcome))
        .collect()
}

fn event(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

// --- events -------------------------------------------------------------------------------

#[test]
fn transfer_family_events_in_both_spellings_and_s3_events() {
    let sftp = uploads(&event("transfer-sftp-upload-completed.json")).unwrap();
    assert_eq!(sftp.objects.len(), 1);
    let o = &sftp.objects[0];
    assert_eq!(
        (o.bucket.as_str(), o.key.as_str()),
        ("landing", "eligibility/members/members.csv")
    );
    assert_eq!(o.size, Some(185));
    assert_eq!(
        o.event_time.unwrap().to_rfc3339(),
        "2026-03-02T08:15:30.412+00:00",
        "the upload's end time"
    );
    let ftp = uploads(&event("transfer-ftp-file-server-upload-completed.json")).unwrap();
    assert_eq!(ftp.objects[0].key, "eligibility/members/members.ndjson");
    let failed = uploads(&event("transfer-sftp-upload-failed.json")).unwrap();
    assert!(failed.objects.is_empty());
    assert!(failed.skipped[0].1.contains("PARTIAL_UPLOAD"), "{failed:?}");
    let s3 = uploads(&event("s3-transfer-put.json")).unwrap();
    assert_eq!(
        s3.objects[0].key, "eligibility/members/members latin1.csv",
        "form-URL-decoded"
    );
    // The fixtures round-trip through serde unchanged.
    for name in [
        "transfer-sftp-upload-completed.json",
        "transfer-ftp-file-server-upload-completed.json",
        "s3-transfer-put.json",
    ] {
        let v = event(name);
        let again: Value = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(uploads(&again).unwrap(), uploads(&v).unwrap());
    }
    let other = json!({"source": "aws.transfer", "detail-type": "SFTP Server File Download Completed", "detail": {"file-path": "/b/k"}});
    assert!(uploads(&other).unwrap().objects.is_empty());
    assert!(uploads(&json!({"nothing": 1})).is_err());
}

// --- good files ---------------------------------------------------------------------------

#[test]
fn csv_records_become_keyed_upserts_in_file_order() {
    let r = read("members.csv", &csv());
    assert!(r.rejected.is_empty(), "{:?}", reasons(&r.rejected));
    assert_eq!(ids(&r.changes), ["M-1001", "M-1002", "M-1003"]);
    let c = &r.changes[2];
    assert_eq!(c.source, "eligibility");
    assert_eq!(c.entity, "members");
    assert_eq!(c.data["last_name"], "O\"Neil");
    assert_eq!(c.data["city"], "Salem\n(North)");
    assert_eq!(r.changes[1].data["last_name"], "Nguyen, Jr.");
    assert!(r.changes[0].sequence < r.changes[1].sequence);
    assert_eq!(r.report.rows, 3);
    assert_eq!(r.report.entries, 1);
    assert_eq!(r.report.broken, None);
}

#[test]
fn a_latin1_file_is_read_when_the_format_says_so() {
    let t = target(FileFormat::Csv(CsvFormat {
        delimiter: ";".into(),
        encoding: Encoding::Latin1,
        ..CsvFormat::default()
    }));
    let r = read("members-latin1.csv", &t);
    assert!(r.rejected.is_empty(), "{:?}", reasons(&r.rejected));
    assert_eq!(r.changes[0].data["last_name"], "Müller");
    assert_eq!(r.changes[0].data["first_name"], "José");
    assert_eq!(r.changes[1].data["first_name"], "Anaïs");
}

#[test]
fn gzip_and_zip_are_unwrapped() {
    let gz = read("members.csv.gz", &csv());
    assert_eq!(ids(&gz.changes), ["M-1001", "M-1002", "M-1003"]);
    let plain = read("members.csv", &csv());
    assert_eq!(
        gz.changes.iter().map(|c| &c.data).collect::<Vec<_>>(),
        plain.changes.iter().map(|c| &c.data).collect::<Vec<_>>()
    );
    let zip = read("members.zip", &csv());
    assert!(zip.rejected.is_empty(), "{:?}", reasons(&zip.rejected));
    assert_eq!(ids(&zip.changes), ["M-1001", "M-1002", "M-1003", "M-7001"]);
    assert_eq!(zip.report.entries, 2);
    // The entry is part of the sequence: entry 2's first row sorts after entry 1's last.
    assert!(zip.changes[2].sequence < zip.changes[3].sequence);
}

#[test]
fn openpgp_files_are_decrypted_with_the_sources_key() {
    let r = read("members-encrypted.csv.pgp", &with_key(csv()));
    assert!(r.rejected.is_empty(), "{:?}", reasons(&r.rejected));
    assert_eq!(ids(&r.changes), ["M-1001", "M-1002", "M-1003"]);
    // Armored, and a gzip inside.
    let r = read("members-encrypted.csv.gz.asc", &with_key(csv()));
    assert!(r.rejected.is_empty(), "{:?}", reasons(&r.rejected));
    assert_eq!(r.changes.len(), 3);
}

#[test]
fn fixed_width_ndjson_and_xml() {
    let mut t = target(FileFormat::FixedWidth(FixedWidthFormat {
        layout: "members-layout.yaml".into(),
        encoding: Encoding::Utf8,
    }));
    t.layout = Some(fixtures().join("members-layout.yaml"));
    let r = read("members.dat", &t);
    assert_eq!(ids(&r.changes), ["F-0001", "F-0002", "F-0005"]);
    assert_eq!(r.changes[0].data["birth_date"], "1980-01-15");
    assert_eq!(r.changes[0].data["copay"], "15.00");
    assert_eq!(r.changes[2].data["first_name"], "Raúl");
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why[0].contains("members.dat row 3 (line 3)") && why[0].contains("layout needs 38"),
        "{why:?}"
    );
    assert!(
        why[1].contains("row 4 (line 4)") && why[1].contains("birth_date"),
        "{why:?}"
    );

    let r = read(
        "members.ndjson",
        &target(FileFormat::Ndjson(NdjsonFormat {})),
    );
    assert_eq!(ids(&r.changes), ["N-0001", "N-0005"]);
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(why[0].contains("row 2 (line 3)") && why[0].contains("not JSON"));
    assert!(why[1].contains("row 3 (line 4)") && why[1].contains("array"));
    assert!(why[2].contains("row 4") && why[2].contains("\\\"member_id\\\" is missing"));
    assert_eq!(r.report.rows, 5);

    let mut t = target(FileFormat::Xml(XmlFormat {
        record: "Eligibility/Members/Member".into(),
        encoding: Encoding::Utf8,
    }));
    t.key = vec!["id".into()];
    let r = read("members.xml", &t);
    assert!(r.rejected.is_empty(), "{:?}", reasons(&r.rejected));
    assert_eq!(r.changes.len(), 2);
    assert_eq!(r.changes[1].data["Name"]["Family"], "Néel");
    assert_eq!(r.changes[0].data["BirthDate"], "1970-07-07");
    assert_eq!(r.changes[0].key.0["id"], "X-0001");
}

// --- bad input ----------------------------------------------------------------------------

#[test]
fn broken_quoting_costs_one_row() {
    let r = read("members-broken-quoting.csv", &csv());
    assert_eq!(ids(&r.changes), ["M-4001", "M-4003", "M-4004"]);
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].contains("members-broken-quoting.csv row 2 (line 3)") && why[0].contains("quot"),
        "{why:?}"
    );
    assert_eq!(r.report.rows, 4, "every row accounted for");
    // Bad rows do not make a broken file.
    assert_eq!(r.report.broken, None);
}

#[test]
fn rows_with_the_wrong_column_count_are_refused() {
    let r = read("members-wrong-columns.csv", &csv());
    assert_eq!(ids(&r.changes), ["M-5001", "M-5004"]);
    let why = reasons(&r.rejected);
    assert!(
        why[0].contains("row 2 (line 3)") && why[0].contains("5 fields, but the header has 6"),
        "{why:?}"
    );
    assert!(why[1].contains("row 3 (line 4)") && why[1].contains("7 fields"));
}

#[test]
fn a_file_in_another_encoding_refuses_the_rows_it_breaks() {
    let r = read("members-wrong-encoding.csv", &csv());
    assert_eq!(ids(&r.changes), ["M-3001", "M-3003"]);
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 1);
    assert!(
        why[0].contains("row 2 (line 3)")
            && why[0].contains("UTF-8")
            && why[0].contains("encoding"),
        "{why:?}"
    );
    // No patient data in the reason.
    assert!(!why[0].contains("Müller") && !why[0].contains("Jos"));
}

#[test]
fn a_truncated_gzip_keeps_the_rows_before_the_cut_and_names_where_it_broke() {
    let r = read("members-truncated.csv.gz", &csv());
    let n = r.changes.len();
    assert!(n > 100 && n < 2000, "{n} rows before the cut");
    // In order, none skipped.
    for (i, c) in r.changes.iter().enumerate() {
        assert_eq!(c.key.0["member_id"], format!("M-6{:03}", i + 1));
    }
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].contains(&format!("row {} (line {})", n + 1, n + 2))
            && why[0].contains("ends early"),
        "{why:?}"
    );
    // A full refresh must not be published without the rest of the file.
    let broken = r.report.broken.as_deref().unwrap();
    assert!(
        broken.contains("members-truncated.csv.gz") && broken.contains("ends early"),
        "{broken}"
    );
    assert_eq!(r.report.rejected, 1);
}

#[test]
fn malformed_xml_costs_the_record_it_is_in() {
    let mut t = target(FileFormat::Xml(XmlFormat {
        record: "Eligibility/Members/Member".into(),
        encoding: Encoding::Utf8,
    }));
    t.key = vec!["id".into()];
    let r = read("members-malformed.xml", &t);
    let keys: Vec<&Value> = r.changes.iter().map(|c| &c.key.0["id"]).collect();
    assert_eq!(keys, [&json!("X-1001"), &json!("X-1003")]);
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].contains("record 2") && why[0].contains("</Given>"),
        "{why:?}"
    );
}

#[test]
fn a_file_for_another_key_or_no_key_is_refused_whole() {
    let r = read("members-wrong-key.csv.pgp", &with_key(csv()));
    assert!(r.changes.is_empty());
    let why = reasons(&r.rejected);
    assert_eq!(why.len(), 1);
    assert!(why[0].contains("cannot decrypt"), "{why:?}");
    assert!(r.report.broken.unwrap().contains("cannot decrypt"));
    let r = read("members-encrypted.csv.pgp", &csv());
    assert!(reasons(&r.rejected)[0].contains("names no pgp key"));
    assert!(r.report.broken.is_some());
    // Not OpenPGP at all, though named so.
    let r = read("members.zip", &with_key(csv()));
    assert_eq!(r.changes.len(), 4, "a .zip is not taken for OpenPGP");
}

#[test]
fn a_file_that_cannot_be_read_from_its_first_line_is_broken_and_counted_once() {
    // A fixed-width file with no layout: the file itself is refused (row 0), once.
    let t = target(FileFormat::FixedWidth(FixedWidthFormat {
        layout: "unused.yaml".into(),
        encoding: Encoding::Utf8,
    }));
    let r = read("members.csv", &t);
    assert!(r.changes.is_empty());
    assert_eq!(r.report.rows, 0);
    assert_eq!(r.rejected.len(), 1);
    assert!(r.report.broken.unwrap().contains("layout"));
}

#[test]
fn a_missing_object_is_one_rejection() {
    let r = read("nothing-here.csv", &csv());
    assert!(r.changes.is_empty());
    assert!(reasons(&r.rejected)[0].contains("no such object"));
    assert!(r.report.broken.unwrap().contains("nothing-here.csv"));
    assert_eq!(r.report.rejected, 1);
}

// --- configuration ------------------------------------------------------------------------

const PIPELINE: &str = "
sources:
  - name: eligibility
    transfer: { location: s3://landing/eligibility }
    files:
      - match: 'members/*.csv.gz'
        entity: members
        key: [member_id]
        format: { csv: { delimiter: '|' } }
        mapping: m/members.yaml
        load: full-refresh
      - match: 'members/**/*.csv'
        entity: members
        key: [member_id]
        format: { csv: {} }
        mapping: m/members.yaml
      - match: 'claims/*.dat'
        entity: claims
        key: [claim_id]
        format: { fixed_width: { layout: layouts/claims.yaml } }
        mapping: m/claims.yaml
";

#[test]
fn uploads_bind_to_the_first_files_entry_that_matches() {
    let c = PipelineConfig::from_yaml(PIPELINE, Path::new("p.yaml")).unwrap();
    let t = c
        .transfer_target("landing", "eligibility/members/2026-03.csv.gz")
        .unwrap();
    assert_eq!(
        (t.entity.as_str(), t.load),
        ("members", LoadMode::FullRefresh)
    );
    let t = c
        .transfer_target("landing", "eligibility/members/march/2026-03.csv")
        .unwrap();
    assert_eq!(t.load, LoadMode::Increment);
    assert!(
        c.transfer_target("landing", "eligibility/members/march/x.csv.gz")
            .is_none(),
        "`*` stays within a folder"
    );
    let t = c
        .transfer_target("landing", "eligibility/claims/c.dat")
        .unwrap();
    assert_eq!(t.layout.unwrap(), Path::new("layouts/claims.yaml"));
    assert!(c.transfer_target("landing", "other/claims/c.dat").is_none());
    assert!(
        c.transfer_target("elsewhere", "eligibility/claims/c.dat")
            .is_none()
    );
    assert!(
        c.transfer_source_for("landing", "eligibility/notes.txt")
            .is_some()
    );
}

#[test]
fn bad_transfer_configuration_is_refused_at_start() {
    for (from, to, why) in [
        ("delimiter: '|'", "delimitter: '|'", "delimitter"),
        ("load: full-refresh", "load: full", "full"),
        ("'claims/*.dat'", "'claims/[.dat'", "match"),
        ("key: [claim_id]", "key: []", "key"),
        (
            "mapping: m/claims.yaml",
            "mapping: m/other.yaml\n        x: 1",
            "x",
        ),
        (
            "entity: claims\n        key: [claim_id]",
            "entity: members\n        key: [claim_id]",
            "one mapping and one key",
        ),
        (
            "transfer: { location: s3://landing/eligibility }",
            "transfer: { location: 'ftp://x' }",
            "location",
        ),
        (
            "transfer: { location: s3://landing/eligibility }",
            "transfer: { location: s3://landing }\n    entities: { e: { key: [k], mapping: m.yaml } }",
            "files",
        ),
    ] {
        let bad = PIPELINE.replace(from, to);
        assert_ne!(bad, PIPELINE, "{from}");
        let e = PipelineConfig::from_yaml(&bad, Path::new("p.yaml")).unwrap_err();
        assert!(e.message.contains(why), "{to}: {e}");
    }
    // `files` on another kind of source.
    let dms = "sources:\n  - name: c\n    dms: { location: d }\n    entities: { t: { key: [id], mapping: m.yaml } }\n    files:\n      - { match: '*', entity: e, key: [k], format: { ndjson: {} }, mapping: m.yaml }\n";
    let e = PipelineConfig::from_yaml(dms, Path::new("p.yaml")).unwrap_err();
    assert!(e.message.contains("only a `transfer` source"), "{e}");
}

// --- end to end ---------------------------------------------------------------------------

const MAPPING: &str = r#"
source: eligibility
entity: members
resources:
  - resourceType: Patient
    template:
      identifier:
        - { system: "urn:fhir-unify:eligibility:member", value: "{{ record.member_id | required }}" }
      name:
        - family: "{{ record.last_name | required }}"
          given: ["{{ record.first_name }}"]
      gender: "{{ record.sex | translate('gender') }}"
      birthDate: "{{ record.birth_date }}"
translations:
  gender: { M: male, F: female }
"#;

fn pipeline(dir: &Path, extra: &str) -> PipelineConfig {
    let landing = dir.join("landing");
    std::fs::create_dir_all(landing.join("in")).unwrap();
    std::fs::create_dir_all(dir.join("m")).unwrap();
    std::fs::write(dir.join("m/members.yaml"), MAPPING).unwrap();
    let keys = fixtures().join("keys/test-only-secret.asc");
    let yaml = format!(
        "sources:
  - name: eligibility
    transfer:
      location: landing
      pgp: {{ private_key: {} }}
    files:
      - match: 'in/*.csv*'
        entity: members
        key: [member_id]
        format: {{ csv: {{}} }}
        mapping: m/members.yaml
{extra}",
        keys.display()
    );
    let p = dir.join("fhir-unify.yaml");
    std::fs::write(&p, yaml).unwrap();
    PipelineConfig::load(&p).unwrap()
}

#[tokio::test]
async fn uploads_go_through_unify_into_the_store_and_bad_rows_into_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(dir.path(), "");
    for f in [
        "members.csv",
        "members-broken-quoting.csv",
        "members-encrypted.csv.pgp",
    ] {
        std::fs::copy(fixtures().join(f), dir.path().join("landing/in").join(f)).unwrap();
    }
    std::fs::write(dir.path().join("landing/notes.txt"), "not data").unwrap();
    let data = dir.path().join("data");
    let rt = LocalRuntime::open(config, DataDir(data.clone())).unwrap();
    let s = rt.run().await.unwrap();
    // 3 + 4 + 3 rows; M-1001..3 twice (plain and encrypted: the same resources), 3 of the
    // broken-quoting file; its row 2 quarantined.
    assert_eq!(s.records_in, 10, "{s:?}");
    assert_eq!(s.quarantined, 1, "{s:?}");
    assert_eq!(s.created, 6, "{s:?}");
    let id = |member: &str| ResourceRef {
        resource_type: "Patient".into(),
        id: fhir_unify::mapping::resource_id(
            "eligibility",
            "members",
            &RecordKey::from_pairs([("member_id", json!(member))]),
            "Patient",
            None,
        ),
    };
    let p = rt.env.store.read(&id("M-1002")).await.unwrap().unwrap();
    let r = p.resource.unwrap();
    assert_eq!(r["name"][0]["family"], "Nguyen, Jr.");
    assert_eq!(r["gender"], "male");
    assert!(rt.env.store.read(&id("M-4002")).await.unwrap().is_none());
    let q = rt.queue.list(&rt.config.quarantine.queue).unwrap();
    assert_eq!(q.len(), 1);
    let rejection: Rejection = serde_json::from_str(&q[0].body).unwrap();
    assert!(
        rejection
            .record
            .contains("in/members-broken-quoting.csv row 2 (line 3)"),
        "{}",
        rejection.record
    );

    // A second run changes nothing (same files, same modification times).
    let rt = LocalRuntime::open(pipeline(dir.path(), ""), DataDir(data)).unwrap();
    let s = rt.run().await.unwrap();
    assert_eq!((s.created, s.updated, s.events), (0, 0, 0), "{s:?}");
}

#[tokio::test]
async fn the_handler_takes_a_transfer_family_event_and_skips_what_it_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(dir.path(), "");
    std::fs::copy(
        fixtures().join("members.csv.gz"),
        dir.path().join("landing/in/members.csv.gz"),
    )
    .unwrap();
    let rt = LocalRuntime::open(config, DataDir(dir.path().join("data"))).unwrap();
    let objects = rt.transfer_objects();
    let mut e = event("transfer-sftp-upload-completed.json");
    e["detail"]["file-path"] = json!("/eligibility/in/members.csv.gz");
    let out = rt.deliver_transfer(e, objects.clone()).await.unwrap();
    assert_eq!(out.records_in, 3);
    assert_eq!(out.files[0].load, LoadMode::Increment);
    assert!(out.runs.iter().all(|r| r.succeeded));
    assert!(out.runs[0].execution.starts_with("transfer-"));
    // Another folder, another bucket, a failed upload: skipped, each with why.
    for (path, why) in [
        ("/eligibility/elsewhere/x.csv", "matches no `files` entry"),
        ("/other-bucket/in/x.csv", "no transfer source"),
    ] {
        let mut e = event("transfer-sftp-upload-completed.json");
        e["detail"]["file-path"] = json!(path);
        let out = rt.deliver_transfer(e, objects.clone()).await.unwrap();
        assert!(out.files.is_empty());
        assert!(out.skipped[0].1.contains(why), "{:?}", out.skipped);
    }
    let out = rt
        .deliver_transfer(event("transfer-sftp-upload-failed.json"), objects.clone())
        .await
        .unwrap();
    assert_eq!(out.skipped.len(), 1);
    // Not an event at all: an error, not a panic.
    assert!(rt.deliver_transfer(json!([1]), objects).await.is_err());
}

#[test]
fn a_bad_layout_or_key_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let layout = "      - match: 'fw/*.dat'
        entity: members
        key: [member_id]
        format: { fixed_width: { layout: missing-layout.yaml } }
        mapping: m/members.yaml
";
    let config = pipeline(dir.path(), layout);
    let e = config.load_mappings().unwrap_err();
    assert!(e.file.ends_with("missing-layout.yaml"), "{e}");
    let p = dir.path().join("fhir-unify.yaml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("test-only-secret.asc", "test-only-public.asc")
        .replace(layout, "");
    std::fs::write(&p, text).unwrap();
    let e = PipelineConfig::load(&p)
        .unwrap()
        .load_mappings()
        .unwrap_err();
    assert!(e.message.contains("secret key"), "{e}");
}
