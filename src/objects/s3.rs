//! S3 as the object store (`aws-sdk-s3`): sizes by `HeadObject`, reads by ranged `GetObject`
//! (`Range: bytes=start-end`), listings by `ListObjectsV2` pages. Only the requested range
//! crosses the wire and is held, so the DMS Parquet reader (footer first, then one column
//! chunk or one read window at a time) never holds a whole file.
//!
//! The [`ObjectStore`] port is synchronous (Parquet decoding is); each call runs the SDK's
//! future to completion on the runtime captured at construction, from a short-lived scoped
//! thread, so it works from a blocking thread (where the DMS handler decodes) and never panics
//! for being called inside an async context.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::OnceCell;

use super::{LocalBuckets, ObjectError, ObjectMeta, ObjectStore};
use crate::config::{DmsLocation, PipelineConfig};

/// S3 error codes worth retrying (S3 asks clients to slow down, or failed inside).
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "ThrottlingException",
];

/// Objects in S3.
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: Arc<OnceCell<aws_sdk_s3::Client>>,
    runtime: Handle,
}

impl S3ObjectStore {
    /// A store over a given client, running its calls on `runtime`.
    pub fn new(client: aws_sdk_s3::Client, runtime: Handle) -> Self {
        S3ObjectStore {
            client: Arc::new(OnceCell::new_with(Some(client))),
            runtime,
        }
    }

    /// A store whose client is configured from the environment ([`crate::aws::sdk_config`])
    /// on first use, on the current Tokio runtime; an error outside of one.
    pub fn from_env() -> Result<Self, String> {
        let runtime = Handle::try_current()
            .map_err(|e| format!("the S3 object store needs a Tokio runtime: {e}"))?;
        Ok(S3ObjectStore {
            client: Arc::new(OnceCell::new()),
            runtime,
        })
    }

    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async { aws_sdk_s3::Client::new(&crate::aws::sdk_config().await) })
            .await
    }

    /// Runs a future to its end on the store's runtime, from a thread of its own (a thread
    /// inside the runtime may not block on it).
    fn block<T: Send>(
        &self,
        bucket: &str,
        key: &str,
        fut: impl Future<Output = Result<T, ObjectError>> + Send,
    ) -> Result<T, ObjectError> {
        let runtime = &self.runtime;
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(fut))
                .join()
                .unwrap_or_else(|_| {
                    Err(ObjectError::Io {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                        message: "the S3 call's thread stopped".into(),
                        retryable: true,
                    })
                })
        })
    }
}

/// Maps an SDK error to the port's error; `not_found` says the service error is a missing
/// object (each operation has its own error type).
fn object_error<E>(
    bucket: &str,
    key: &str,
    e: &SdkError<E, HttpResponse>,
    not_found: bool,
) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let io = |message: String, retryable: bool| ObjectError::Io {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message,
        retryable,
    };
    match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            let status = s.raw().status().as_u16();
            if code == "NoSuchBucket" {
                ObjectError::UnknownBucket {
                    bucket: bucket.to_owned(),
                }
            } else if not_found || code == "NoSuchKey" || code == "NotFound" || status == 404 {
                ObjectError::NotFound {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }
            } else {
                let message = format!(
                    "{} (HTTP {status}): {}",
                    if code.is_empty() { "S3 error" } else { code },
                    s.err().message().unwrap_or_default()
                );
                io(message, RETRYABLE_CODES.contains(&code) || status >= 500)
            }
        }
        SdkError::ConstructionFailure(_) => io(format!("{e:?}"), false),
        // Timeouts, connections, unreadable answers: the call may pass later.
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            io(text, true)
        }
    }
}

impl ObjectStore for S3ObjectStore {
    fn size(&self, bucket: &str, key: &str) -> Result<u64, ObjectError> {
        self.block(bucket, key, async {
            let out = self
                .client()
                .await
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| {
                    let nf = e.as_service_error().is_some_and(|s| s.is_not_found());
                    object_error(bucket, key, &e, nf)
                })?;
            Ok(out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0))
        })
    }

    fn read_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: usize,
    ) -> Result<Bytes, ObjectError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = start.saturating_add(len as u64 - 1);
        self.block(bucket, key, async {
            let sent = self
                .client()
                .await
                .get_object()
                .bucket(bucket)
                .key(key)
                .range(format!("bytes={start}-{end}"))
                .send()
                .await;
            let out = match sent {
                Ok(out) => out,
                // A range that starts at or past the end: nothing there, as a file read gives.
                Err(e) if e.code() == Some("InvalidRange") => return Ok(Bytes::new()),
                Err(e) => {
                    let nf = e.as_service_error().is_some_and(|s| s.is_no_such_key());
                    return Err(object_error(bucket, key, &e, nf));
                }
            };
            let body = out.body.collect().await.map_err(|e| ObjectError::Io {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                message: format!("reading bytes {start}-{end}: {e}"),
                retryable: true,
            })?;
            let mut bytes = body.into_bytes();
            // A server that ignored the range: keep only what was asked for.
            if bytes.len() > len {
                bytes = bytes.slice(..len);
            }
            Ok(bytes)
        })
    }

    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.block(bucket, prefix, async {
            let client = self.client().await;
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| object_error(bucket, prefix, &e, false))?;
                for o in page.contents() {
                    if let Some(key) = o.key() {
                        out.push(ObjectMeta {
                            key: key.to_owned(),
                            size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                        });
                    }
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }
}

/// Local folders for some buckets (by name), S3 for every other bucket.
#[derive(Debug, Clone)]
pub struct RoutedObjects {
    local: LocalBuckets,
    local_names: BTreeSet<String>,
    remote: Arc<dyn ObjectStore>,
}

impl RoutedObjects {
    fn pick(&self, bucket: &str) -> &dyn ObjectStore {
        if self.local_names.contains(bucket) {
            &self.local
        } else {
            self.remote.as_ref()
        }
    }
}

impl ObjectStore for RoutedObjects {
    fn size(&self, bucket: &str, key: &str) -> Result<u64, ObjectError> {
        self.pick(bucket).size(bucket, key)
    }

    fn read_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: usize,
    ) -> Result<Bytes, ObjectError> {
        self.pick(bucket).read_range(bucket, key, start, len)
    }

    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.pick(bucket).list(bucket, prefix)
    }
}

/// The object store for the DMS sources of a pipeline file: a source whose location is a
/// local folder is served as a bucket named after the source; `s3://` locations are read
/// from `s3` (built only when some source needs it).
pub fn dms_objects(
    config: &PipelineConfig,
    s3: impl FnOnce() -> Result<Arc<dyn ObjectStore>, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let locations = config
        .sources
        .iter()
        .filter_map(|s| s.dms.as_ref().map(|d| (s.name.as_str(), d.location())));
    routed_objects(config, locations, s3)
}

/// The object store for the Transfer sources of a pipeline file, routed as [`dms_objects`]
/// routes DMS sources: local folders as buckets named after their source, `s3://`
/// locations from `s3` (built only when some source needs it).
pub fn transfer_objects(
    config: &PipelineConfig,
    s3: impl FnOnce() -> Result<Arc<dyn ObjectStore>, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let locations = config
        .sources
        .iter()
        .filter_map(|s| s.transfer.as_ref().map(|t| (s.name.as_str(), t.location())));
    routed_objects(config, locations, s3)
}

/// S3 through the SDK configured from the environment (region, credentials): the `s3`
/// argument of the routers below, built only when some location is `s3://`.
pub fn from_env_shared() -> Result<Arc<dyn ObjectStore>, String> {
    S3ObjectStore::from_env().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
}

/// The object store for every file source of a pipeline file, DMS and Transfer, routed as
/// [`dms_objects`] routes DMS sources: what a bulk load reads (a DMS full load, or a
/// full-refresh file).
pub fn source_objects(
    config: &PipelineConfig,
    s3: impl FnOnce() -> Result<Arc<dyn ObjectStore>, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let locations = config.sources.iter().filter_map(|s| {
        let location = match (&s.dms, &s.transfer) {
            (Some(d), _) => d.location(),
            (None, Some(t)) => t.location(),
            (None, None) => return None,
        };
        Some((s.name.as_str(), location))
    });
    routed_objects(config, locations, s3)
}

/// Local folders as buckets named after their source (resolved against the pipeline file),
/// every other bucket from `s3` when some location is `s3://`.
fn routed_objects<'a>(
    config: &PipelineConfig,
    locations: impl Iterator<Item = (&'a str, Result<DmsLocation, String>)>,
    s3: impl FnOnce() -> Result<Arc<dyn ObjectStore>, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let mut local = LocalBuckets::new();
    let mut local_names = BTreeSet::new();
    let mut needs_s3 = false;
    for (name, location) in locations {
        match location.map_err(|e| format!("source {name:?}: {e}"))? {
            DmsLocation::Local { dir } => {
                local.insert(name.to_owned(), config.resolve(&dir));
                local_names.insert(name.to_owned());
            }
            DmsLocation::S3 { .. } => needs_s3 = true,
        }
    }
    if !needs_s3 {
        return Ok(local.shared());
    }
    Ok(Arc::new(RoutedObjects {
        local,
        local_names,
        remote: s3()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn local_folders_stay_local_and_s3_locations_go_to_s3() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lab/x")).unwrap();
        std::fs::write(dir.path().join("lab/x/f.parquet"), b"12345").unwrap();
        let yaml = "
sources:
  - name: lab
    dms: { location: lab }
    entities: { x: { key: [id], mapping: m.yaml } }
  - name: clinic
    dms: { location: s3://landing/clinic }
    entities: { y: { key: [id], mapping: m.yaml } }
";
        let mut config = PipelineConfig::from_yaml(yaml, Path::new("p.yaml")).unwrap();
        config.base_dir = dir.path().to_path_buf();
        let remote = LocalBuckets::new()
            .with_bucket("landing", dir.path().join("lab"))
            .shared();
        let objects = dms_objects(&config, || Ok(remote)).unwrap();
        assert_eq!(objects.size("lab", "x/f.parquet").unwrap(), 5);
        assert_eq!(objects.size("landing", "x/f.parquet").unwrap(), 5);
        assert!(matches!(
            objects.size("elsewhere", "x/f.parquet"),
            Err(ObjectError::UnknownBucket { .. })
        ));

        // Only local folders: S3 is never built.
        let only_local = PipelineConfig::from_yaml(
            "sources:\n  - name: lab\n    dms: { location: lab }\n    entities: { x: { key: [id], mapping: m.yaml } }\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(dms_objects(&only_local, || Err("not needed".into())).is_ok());
        // S3 needed but not available: the reason, at start.
        let e = dms_objects(&config, || Err("no runtime".into())).unwrap_err();
        assert_eq!(e, "no runtime");
    }

    #[test]
    fn transfer_local_folders_stay_local_and_s3_locations_go_to_s3() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("clinic/in")).unwrap();
        std::fs::write(dir.path().join("clinic/in/p.csv"), b"id\n1\n").unwrap();
        let yaml = "
sources:
  - name: clinic
    transfer: { location: clinic }
    files: [{ match: '*.csv', entity: x, key: [id], format: { csv: {} }, mapping: m.yaml }]
  - name: partner
    transfer: { location: s3://uploads/partner }
    files: [{ match: '*.csv', entity: y, key: [id], format: { csv: {} }, mapping: m.yaml }]
  - name: lab
    dms: { location: s3://dms-landing/lab }
    entities: { z: { key: [id], mapping: m.yaml } }
";
        let mut config = PipelineConfig::from_yaml(yaml, Path::new("p.yaml")).unwrap();
        config.base_dir = dir.path().to_path_buf();
        let remote = LocalBuckets::new()
            .with_bucket("uploads", dir.path().join("clinic"))
            .shared();
        let objects = transfer_objects(&config, || Ok(remote)).unwrap();
        assert_eq!(objects.size("clinic", "in/p.csv").unwrap(), 5);
        assert_eq!(objects.size("uploads", "in/p.csv").unwrap(), 5);
        assert!(matches!(
            objects.size("elsewhere", "in/p.csv"),
            Err(ObjectError::UnknownBucket { .. })
        ));

        // A DMS source on S3 does not make the Transfer store build S3, nor the other way.
        let only_local = PipelineConfig::from_yaml(
            "sources:\n  - name: clinic\n    transfer: { location: clinic }\n    files: [{ match: '*.csv', entity: x, key: [id], format: { csv: {} }, mapping: m.yaml }]\n  - name: lab\n    dms: { location: s3://dms-landing/lab }\n    entities: { z: { key: [id], mapping: m.yaml } }\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(transfer_objects(&only_local, || Err("not needed".into())).is_ok());
        let e = transfer_objects(&config, || Err("no runtime".into())).unwrap_err();
        assert_eq!(e, "no runtime");

        // A bulk load reads both kinds: the local Transfer folder, and S3 for the rest.
        let dms_dir = dir.path().join("lab");
        std::fs::create_dir_all(&dms_dir).unwrap();
        std::fs::write(dms_dir.join("t.parquet"), b"PAR1").unwrap();
        let remote = LocalBuckets::new()
            .with_bucket("dms-landing", &dms_dir)
            .shared();
        let objects = source_objects(&config, || Ok(remote)).unwrap();
        assert_eq!(objects.size("clinic", "in/p.csv").unwrap(), 5);
        assert_eq!(objects.size("dms-landing", "t.parquet").unwrap(), 4);
        assert!(source_objects(&only_local, || Err("no runtime".into())).is_err());
    }

    #[test]
    fn outside_a_runtime_the_store_says_why() {
        let e = S3ObjectStore::from_env().unwrap_err();
        assert!(e.contains("Tokio runtime"), "{e}");
    }
}
