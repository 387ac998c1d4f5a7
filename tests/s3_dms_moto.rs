//! The S3 object store against an emulated S3 (moto's server, real SDK over HTTP): ranged
//! reads, sizes, listings and their errors; DMS Parquet files put in the emulator's bucket —
//! the project's example drop and the shared conformance files (read from `../shared`, never
//! copied into the project) — read by the `ingest-dms` handler and the DMS reader from there
//! with the same result as from a local folder laid out like the bucket.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod moto;
}

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use common::aws::{s3, sdk};
use common::moto::Moto;
use fhir_unify::config::PipelineConfig;
use fhir_unify::env::{IngestEnv, Workflow, WorkflowError, WorkflowRun};
use fhir_unify::handlers::ingest_dms;
use fhir_unify::model::{ChangeBatch, Rejection, SourceChange};
use fhir_unify::objects::s3::{S3ObjectStore, dms_objects};
use fhir_unify::objects::{LocalBuckets, ObjectError, ObjectStore};
use fhir_unify::sources::dms::{Decoded, DmsBinding, DmsPath, ObjectReport, event, read_object};

/// Every file under `dir`, as (key relative to it, path).
fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, p));
            }
        }
    }
    out.sort();
    out
}

/// Uploads every file under `dir` to `bucket` below `prefix`; the (key, size) of each.
async fn upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    dir: &Path,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (rel, path) in files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        let key = format!("{prefix}{rel}");
        out.push((key.clone(), bytes.len() as u64));
        client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }
    out
}

fn shared_dms() -> PathBuf {
    let dir = std::env::var_os("FHIR_UNIFY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join("conformance/dms");
    assert!(
        dir.is_dir(),
        "the DMS conformance data is missing: expected the folder {} (set FHIR_UNIFY_SHARED_DIR to the shared/ folder)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_sizes_listings_and_errors() {
    let moto = Moto::start();
    let client = s3(&sdk(&moto.endpoint).await);
    client
        .create_bucket()
        .bucket("landing")
        .send()
        .await
        .unwrap();
    let body: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 17).collect();
    for key in ["a/big.bin", "a/b/small.txt", "top.txt"] {
        let bytes = if key == "a/big.bin" {
            body.clone()
        } else {
            key.as_bytes().to_vec()
        };
        client
            .put_object()
            .bucket("landing")
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }
    let store = S3ObjectStore::new(client.clone(), tokio::runtime::Handle::current());
    // The port is synchronous: call it from a blocking thread, as the DMS handler does.
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            store.size("landing", "a/big.bin").unwrap(),
            body.len() as u64
        );
        let mid = store
            .read_range("landing", "a/big.bin", 1_000_000, 4096)
            .unwrap();
        assert_eq!(&mid[..], &body[1_000_000..1_004_096]);
        // Past the end: what there is, then nothing.
        let tail = store
            .read_range("landing", "a/big.bin", body.len() as u64 - 5, 100)
            .unwrap();
        assert_eq!(&tail[..], &body[body.len() - 5..]);
        assert!(
            store
                .read_range("landing", "a/big.bin", body.len() as u64, 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .read_range("landing", "a/big.bin", 0, 0)
                .unwrap()
                .is_empty()
        );

        let keys: Vec<String> = store
            .list("landing", "a/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/b/small.txt", "a/big.bin"]);
        assert_eq!(store.list("landing", "").unwrap().len(), 3);
        assert!(store.list("landing", "nothing/").unwrap().is_empty());

        assert!(matches!(
            store.size("landing", "nope"),
            Err(ObjectError::NotFound { .. })
        ));
        assert!(matches!(
            store.read_range("landing", "nope", 0, 10),
            Err(ObjectError::NotFound { .. })
        ));
        let e = store.list("no-such-bucket", "").unwrap_err();
        assert!(matches!(e, ObjectError::UnknownBucket { .. }), "{e:?}");
        assert!(!e.is_retryable());
    })
    .await
    .unwrap();

    // A listing longer than one page (1,000 keys) is followed to its end.
    for i in 0..1003 {
        client
            .put_object()
            .bucket("landing")
            .key(format!("many/{i:05}"))
            .body(Vec::new().into())
            .send()
            .await
            .unwrap();
    }
    let store = S3ObjectStore::new(client, tokio::runtime::Handle::current());
    let listed = tokio::task::spawn_blocking(move || store.list("landing", "many/").unwrap())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1003);
    assert_eq!(listed[1002].key, "many/01002");

    // A server that cannot be reached is a retryable error, not a panic.
    let gone = s3(&sdk(&moto.endpoint).await);
    drop(moto);
    let store = S3ObjectStore::new(gone, tokio::runtime::Handle::current());
    let e = tokio::task::spawn_blocking(move || store.size("landing", "top.txt"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

/// Records the batches handed to `unify`.
#[derive(Debug, Default)]
struct Recording {
    batches: Mutex<Vec<ChangeBatch>>,
}

#[async_trait]
impl Workflow for Recording {
    async fn run_unify(&self, batch: &ChangeBatch) -> Result<WorkflowRun, WorkflowError> {
        self.batches.lock().unwrap().push(batch.clone());
        Ok(WorkflowRun {
            execution: batch.batch_id.clone(),
            succeeded: true,
            output: None,
            error: None,
            cause: None,
        })
    }
}

const PIPELINE: &str = "
sources:
  - name: clinic
    dms: { location: s3://landing/dms/clinic, timestamp_column: DMS_TIMESTAMP }
    entities:
      public.patients: { key: [patient_id], mapping: m/patients.yaml }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_dms_reads_the_example_drop_from_s3_as_from_a_local_folder() {
    let moto = Moto::start();
    let client = s3(&sdk(&moto.endpoint).await);
    client
        .create_bucket()
        .bucket("landing")
        .send()
        .await
        .unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let objects = upload(
        &client,
        "landing",
        "dms/clinic/",
        &examples.join("dms/clinic"),
    )
    .await;
    assert!(objects.len() >= 3, "{objects:?}");
    let event = event::notification("landing", &objects, Utc::now());
    let config = Arc::new(PipelineConfig::from_yaml(PIPELINE, Path::new("p.yaml")).unwrap());

    // The store the Lambda builds for this pipeline file: S3 for the s3:// location.
    let s3_store = dms_objects(&config, || {
        Ok(Arc::new(S3ObjectStore::new(
            client.clone(),
            tokio::runtime::Handle::current(),
        )) as Arc<dyn ObjectStore>)
    })
    .unwrap();
    let local_store = LocalBuckets::new()
        .with_bucket("landing", &examples)
        .shared();

    let mut results = Vec::new();
    for store in [s3_store, local_store] {
        let wf = Arc::new(Recording::default());
        let env = IngestEnv {
            config: config.clone(),
            workflow: wf.clone(),
        };
        let out = ingest_dms::handle(event.clone(), &env, store)
            .await
            .unwrap();
        let batches = wf.batches.lock().unwrap().clone();
        results.push((
            out.files,
            out.skipped,
            out.rejected,
            out.records_in,
            batches,
        ));
    }
    let (local, s3) = (results.pop().unwrap(), results.pop().unwrap());
    assert!(local.3 > 0, "the example drop has changes");
    assert_eq!(
        local.0.len(),
        objects.len(),
        "every file read: {:?}",
        local.1
    );
    assert_eq!(s3.0, local.0, "file reports");
    assert_eq!(s3.1, local.1, "skipped");
    assert_eq!(s3.2, local.2, "rejections");
    assert_eq!(s3.3, local.3, "changes");
    assert_eq!(s3.4, local.4, "batches, ids and changes in order");
}

fn read_all(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    prefix: &str,
    key: &str,
    binding: DmsBinding,
) -> (Vec<SourceChange>, Vec<Rejection>, ObjectReport) {
    let path = DmsPath::parse(key, prefix).unwrap();
    let mut changes = Vec::new();
    let mut rejected = Vec::new();
    let fallback = "2024-01-01T00:00:00Z".parse().unwrap();
    let report = read_object(
        store,
        bucket,
        prefix,
        path,
        binding,
        fallback,
        &mut |d| match d {
            Decoded::Change(c) => changes.push(c),
            Decoded::Rejected(r) => rejected.push(r),
        },
    )
    .unwrap();
    (changes, rejected, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_files_read_the_same_from_s3_and_from_disk() {
    let moto = Moto::start();
    let client = s3(&sdk(&moto.endpoint).await);
    client
        .create_bucket()
        .bucket("conformance")
        .send()
        .await
        .unwrap();
    let shared = shared_dms();
    // The file AWS DMS wrote sits at the top of its folder: give it a table folder in the bucket.
    let real = "public/dms_test_table/LOAD00000001.parquet";
    client
        .put_object()
        .bucket("conformance")
        .key(real)
        .body(
            std::fs::read(shared.join("real_aws_dms_postgres_LOAD00000001.parquet"))
                .unwrap()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let generated = upload(
        &client,
        "conformance",
        "generated/",
        &shared.join("generated"),
    )
    .await;
    let s3: Arc<dyn ObjectStore> = Arc::new(S3ObjectStore::new(
        client,
        tokio::runtime::Handle::current(),
    ));

    let shared2 = shared.clone();
    let compared = tokio::task::spawn_blocking(move || {
        let binding = |key: &str| DmsBinding {
            source: "conformance".into(),
            entity: "t".into(),
            key: vec![key.to_owned()],
            timestamp_column: "DMS_TIMESTAMP".into(),
        };
        // The real file, served locally from a folder laid out the same way.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("public/dms_test_table")).unwrap();
        std::fs::copy(
            shared2.join("real_aws_dms_postgres_LOAD00000001.parquet"),
            tmp.path().join(real),
        )
        .unwrap();
        let local = LocalBuckets::new()
            .with_bucket("conformance", tmp.path())
            .shared();
        let from_s3 = read_all(s3.clone(), "conformance", "", real, binding("id"));
        let from_disk = read_all(local, "conformance", "", real, binding("id"));
        assert_eq!(from_s3.2.rows, 10);
        assert_eq!(from_s3, from_disk);

        let local = LocalBuckets::new()
            .with_bucket("conformance", shared2.clone())
            .shared();
        let mut compared = 1;
        for (key, _) in generated.iter().filter(|(k, _)| k.ends_with(".parquet")) {
            let meta_key = format!(
                "{}/_fixture.json",
                Path::new(key.as_str())
                    .ancestors()
                    .find(|a| shared2.join(a).join("_fixture.json").is_file())
                    .unwrap()
                    .display()
            );
            let meta: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(shared2.join(&meta_key)).unwrap())
                    .unwrap();
            let b = DmsBinding {
                timestamp_column: meta["settings"]["ts_col"].as_str().unwrap().to_owned(),
                ..binding(meta["pk"].as_str().unwrap())
            };
            let from_s3 = read_all(s3.clone(), "conformance", "generated", key, b.clone());
            let from_disk = read_all(local.clone(), "conformance", "generated", key, b);
            assert!(from_s3.0.len() as u64 + from_s3.1.len() as u64 > 0, "{key}");
            assert_eq!(from_s3, from_disk, "{key}");
            compared += 1;
        }
        compared
    })
    .await
    .unwrap();
    assert!(compared >= 7, "{compared} files compared");
}
