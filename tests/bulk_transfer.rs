//! Full-refresh files of a Transfer source as versioned dataset loads: `bulk-load` on the ASL
//! engine over uploaded CSV files (what `fhir-unify load SOURCE PATH` runs), each file a new
//! version of the entity's dataset, a broken file failing its load with the pointer left
//! alone, and increment files refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fhir_unify::bulk::generator::{GenOptions, Table, generate, patient_changes};
use fhir_unify::bulk::local::{LoadOutcome, LocalBulk};
use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::local::LocalRuntime;
use fhir_unify::store::DatasetStore;
use fhir_unify::store::dataset::VersionStatus;
use fhir_unify::store::sqlite::SqliteStore;

const DATASET: &str = "partner/members";
const LEASE: Duration = Duration::from_secs(60);
const PATIENTS: u64 = 300;

/// A pipeline file with one Transfer source whose `members/` files are full refreshes (plain
/// and gzip) and whose `updates/` files are increments, mapped with the generator's patient
/// mapping.
fn pipeline(dir: &Path) -> PipelineConfig {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mapping = std::fs::read_to_string(repo.join("examples/mappings/synthea/patients.yaml"))
        .unwrap()
        .replace("source: synthea", "source: partner")
        .replace("entity: public.patients", "entity: members");
    std::fs::write(dir.join("members.yaml"), mapping).unwrap();
    let yaml = "
store:
  sqlite: { path: store.db }
events:
  local:
    ndjson: events.ndjson
quarantine:
  queue: fhir-unify-quarantine
sources:
  - name: partner
    transfer: { location: landing }
    files:
      - { match: 'members/*.csv', entity: members, key: [Id], format: { csv: {} },
          mapping: members.yaml, load: full-refresh }
      - { match: 'members/*.csv.gz', entity: members, key: [Id], format: { csv: {} },
          mapping: members.yaml, load: full-refresh }
      - { match: 'updates/*.csv', entity: members, key: [Id], format: { csv: {} },
          mapping: members.yaml }
";
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    PipelineConfig::load(&path).unwrap()
}

/// The generator's patients as a CSV upload (`variant` as in `fhir-unify gen`).
fn patients_csv(tmp: &Path, variant: u64) -> String {
    let dir = tmp.join(format!("gen-{variant}"));
    let mut opts = GenOptions::new(PATIENTS, &dir);
    opts.tables = vec![Table::Patients];
    opts.variant = variant;
    opts.csv = true;
    generate(&opts).unwrap();
    std::fs::read_to_string(dir.join("csv/patients.csv")).unwrap()
}

fn put(landing: &Path, key: &str, bytes: &[u8]) -> PathBuf {
    let path = landing.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The landing folder with two monthly full refreshes, January (variant 0) and February
/// (variant 3); January's path.
fn two_months(tmp: &Path) -> (PathBuf, PathBuf) {
    let landing = tmp.join("landing");
    let january = put(
        &landing,
        "members/2026-01.csv",
        patients_csv(tmp, 0).as_bytes(),
    );
    put(
        &landing,
        "members/2026-02.csv",
        patients_csv(tmp, 3).as_bytes(),
    );
    (landing, january)
}

async fn load(rt: &LocalRuntime, path: &Path) -> Vec<LoadOutcome> {
    let bulk = LocalBulk::open(rt, "partner", path, LEASE).unwrap();
    let mut out = Vec::new();
    for req in bulk.loads("partner").unwrap() {
        out.push(bulk.load(&req).await.unwrap());
    }
    out
}

fn published(o: &LoadOutcome, what: &str) -> u64 {
    o.published.as_ref().unwrap()[what].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_full_refresh_file_is_a_version_and_a_single_file_loads_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(tmp.path());
    let (landing, january) = two_months(tmp.path());
    // An increment beside them is not part of any full refresh.
    put(
        &landing,
        "updates/2026-02-03.csv",
        patients_csv(tmp.path(), 5).as_bytes(),
    );
    let data = tmp.path().join("data");
    let rt = LocalRuntime::open(config, DataDir(data.clone())).unwrap();

    // The folder: one load per full-refresh file, in key order.
    let outcomes = load(&rt, &landing).await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for (o, version) in outcomes.iter().zip([1, 2]) {
        assert!(o.succeeded, "{o:?}");
        assert_eq!(o.dataset, DATASET);
        let v = o.version.as_ref().unwrap();
        assert_eq!((v.version, v.status), (version, VersionStatus::Succeeded));
        assert_eq!(v.counts.quarantined, 0, "{o:?}");
    }
    assert_eq!(published(&outcomes[0], "created"), PATIENTS);
    let (updated, deleted) = patient_changes(PATIENTS, 3);
    assert_eq!(
        (
            published(&outcomes[1], "updated"),
            published(&outcomes[1], "deleted")
        ),
        (updated, deleted)
    );
    let ds = SqliteStore::open(&data.join("store.db")).unwrap();
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(2));
    assert_eq!(ds.counts().unwrap().resources_live, PATIENTS - deleted);

    // One file: January again is the whole dataset again, so February's deletes come back.
    let again = load(&rt, &january).await;
    assert_eq!(again.len(), 1);
    assert!(again[0].succeeded, "{:?}", again[0]);
    assert_eq!(again[0].version.as_ref().unwrap().version, 3);
    assert_eq!(
        (
            published(&again[0], "created"),
            published(&again[0], "updated"),
            published(&again[0], "deleted")
        ),
        (deleted, updated, 0)
    );
    assert_eq!(ds.counts().unwrap().resources_live, PATIENTS);
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_short_fails_its_load_and_bad_rows_are_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(tmp.path());
    let landing = tmp.path().join("landing");
    let data = tmp.path().join("data");
    let rt = LocalRuntime::open(config, DataDir(data.clone())).unwrap();

    // A row with one field too many: quarantined, the load goes on.
    let mut text = patients_csv(tmp.path(), 0);
    text.push_str("x,y,z\n");
    let good = put(&landing, "members/2026-01.csv", text.as_bytes());
    let v1 = load(&rt, &good).await.remove(0);
    assert!(v1.succeeded, "{v1:?}");
    let counts = v1.version.as_ref().unwrap().counts;
    assert_eq!(
        (
            counts.records_read,
            counts.resources_written,
            counts.quarantined
        ),
        (PATIENTS + 1, PATIENTS, 1)
    );
    let quarantined = rt.queue.list(&rt.config.quarantine.queue).unwrap();
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0].body.contains("members/2026-01.csv row 301"),
        "{}",
        quarantined[0].body
    );

    // February's upload broke off: a full refresh without its end would delete live
    // resources, so the load fails and January stays current.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(patients_csv(tmp.path(), 3).as_bytes())
        .unwrap();
    let bytes = gz.finish().unwrap();
    let cut = put(
        &landing,
        "members/2026-02.csv.gz",
        &bytes[..bytes.len() / 2],
    );
    let v2 = load(&rt, &cut).await.remove(0);
    assert!(!v2.succeeded);
    let version = v2.version.as_ref().unwrap();
    assert_eq!(
        (version.version, version.status),
        (2, VersionStatus::Failed)
    );
    let error = version.error.as_deref().unwrap();
    assert!(
        error.contains("members/2026-02.csv.gz") && error.contains("ends early"),
        "{error}"
    );
    let ds = SqliteStore::open(&data.join("store.db")).unwrap();
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(1));
    assert_eq!(ds.counts().unwrap().resources_live, PATIENTS);

    // The upload again, whole: SUCCEEDED.
    put(&landing, "members/2026-02.csv.gz", &bytes);
    let v3 = load(&rt, &cut).await.remove(0);
    assert!(v3.succeeded, "{v3:?}");
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(3));
}

#[tokio::test]
async fn increments_and_unmatched_files_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(tmp.path());
    let landing = tmp.path().join("landing");
    let update = put(&landing, "updates/2026-02-03.csv", b"Id,LAST\n1,X\n");
    let other = put(&landing, "elsewhere/file.txt", b"x");
    let rt = LocalRuntime::open(config, DataDir(tmp.path().join("data"))).unwrap();

    let bulk = LocalBulk::open(&rt, "partner", &update, LEASE).unwrap();
    let err = bulk.loads("partner").unwrap_err().to_string();
    assert!(
        err.contains("updates/2026-02-03.csv") && err.contains("increment"),
        "{err}"
    );
    let err = LocalBulk::open(&rt, "partner", &other, LEASE)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("file.txt") && err.contains("no `files` entry"),
        "{err}"
    );
    // A folder with no full-refresh file.
    let bulk = LocalBulk::open(&rt, "partner", &landing, LEASE).unwrap();
    let err = bulk.loads("partner").unwrap_err().to_string();
    assert!(err.contains("full-refresh"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_upload_event_loads_the_file_as_a_new_version() {
    use fhir_unify::sources::transfer::upload_completed;
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(tmp.path());
    let landing = tmp.path().join("landing");
    let data = tmp.path().join("data");
    let rt = LocalRuntime::open(config, DataDir(data.clone())).unwrap();
    let objects = rt.transfer_objects();
    let ds = SqliteStore::open(&data.join("store.db")).unwrap();
    let at =
        |day: u32| chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 3, day, 8, 0, 0).unwrap();

    // March's file arrives: bulk-load, not unify.
    let text = patients_csv(tmp.path(), 0);
    put(&landing, "members/2026-03.csv", text.as_bytes());
    let event = upload_completed("partner", "members/2026-03.csv", text.len() as u64, at(1));
    let outcome = rt
        .deliver_transfer(event.clone(), objects.clone())
        .await
        .unwrap();
    assert!(outcome.runs.is_empty(), "no row went to unify");
    assert_eq!(outcome.records_in, 0);
    assert_eq!(outcome.loads.len(), 1);
    let load = &outcome.loads[0];
    assert_eq!(load.dataset, DATASET);
    assert_eq!(load.uri, "s3://partner/members/2026-03.csv");
    assert!(
        load.start.execution.starts_with("partner_members-"),
        "{load:?}"
    );
    assert!(load.start.execution.len() <= 80);
    let run = load.start.finished.as_ref().unwrap();
    assert!(run.succeeded, "{run:?}");
    assert_eq!(run.output.as_ref().unwrap()["created"], PATIENTS);
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(1));

    // April's file, a later upload: its own load, whose difference deletes what it lacks.
    let text = patients_csv(tmp.path(), 3);
    put(&landing, "members/2026-04.csv", text.as_bytes());
    let april = upload_completed("partner", "members/2026-04.csv", text.len() as u64, at(2));
    let outcome = rt.deliver_transfer(april, objects.clone()).await.unwrap();
    let start = &outcome.loads[0].start;
    assert_ne!(start.execution, load.start.execution);
    let (_, deleted) = patient_changes(PATIENTS, 3);
    assert_eq!(
        start.finished.as_ref().unwrap().output.as_ref().unwrap()["deleted"],
        deleted
    );
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(2));

    // March's event again (a redelivery) starts nothing: April stays current.
    let again = rt
        .deliver_transfer(event.clone(), objects.clone())
        .await
        .unwrap();
    let start = &again.loads[0].start;
    assert_eq!(start.execution, load.start.execution);
    assert!(
        start.already_started && start.finished.is_none(),
        "{start:?}"
    );
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(2));
    // So does it from another process on the same data folder: the claim is in the store.
    let rt2 = LocalRuntime::open(pipeline(tmp.path()), DataDir(data.clone())).unwrap();
    let redelivered = rt2.deliver_transfer(event, objects.clone()).await.unwrap();
    assert!(redelivered.loads[0].start.already_started);
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(2));
    // March's file uploaded again later is another upload: loaded again.
    let reupload = upload_completed("partner", "members/2026-03.csv", text.len() as u64, at(9));
    let other = rt2.deliver_transfer(reupload, objects).await.unwrap();
    assert!(!other.loads[0].start.already_started);
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_one_entity_loaded_at_once_still_load_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(tmp.path());
    let (landing, _) = two_months(tmp.path());
    let data = tmp.path().join("data");
    let rt = LocalRuntime::open(config, DataDir(data.clone())).unwrap();
    let bulk = std::sync::Arc::new(LocalBulk::open(&rt, "partner", &landing, LEASE).unwrap());
    let loads = bulk.loads("partner").unwrap();
    let outcomes: Vec<LoadOutcome> = bulk
        .load_all(&loads)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(outcomes.iter().all(|o| o.succeeded), "{outcomes:?}");
    let ds = SqliteStore::open(&data.join("store.db")).unwrap();
    assert_eq!(ds.current(DATASET).await.unwrap(), Some(2));
    let (_, deleted) = patient_changes(PATIENTS, 3);
    assert_eq!(ds.counts().unwrap().resources_live, PATIENTS - deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_run_loads_full_refresh_uploads_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(tmp.path());
    two_months(tmp.path());
    let data = tmp.path().join("data");
    let rt = LocalRuntime::open(config, DataDir(data.clone())).unwrap();
    let summary = rt.run().await.unwrap();
    let (updated, deleted) = patient_changes(PATIENTS, 3);
    assert_eq!((summary.loads, summary.loads_failed), (2, 0), "{summary:?}");
    assert_eq!(summary.executions, 0, "no row went to unify");
    assert_eq!(summary.records_in, 2 * PATIENTS as usize - deleted as usize);
    assert_eq!(
        (summary.created, summary.updated, summary.deleted),
        (PATIENTS as usize, updated as usize, deleted as usize)
    );
    assert_eq!(
        summary.events,
        (PATIENTS + updated + deleted) as usize,
        "one event per change"
    );
    // The same run again: the uploads are the same (same files, same times), nothing loads.
    let again = rt.run().await.unwrap();
    assert_eq!(
        (again.loads, again.created, again.events),
        (0, 0, 0),
        "{again:?}"
    );
}
