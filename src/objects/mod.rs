//! The object-store port: where file sources (DMS Parquet drops, Transfer uploads) are read.
//!
//! On AWS this is S3; on one machine it is a directory tree laid out like the bucket
//! ([`LocalBuckets`]: each bucket name maps to a folder, an object key is a path below it).
//! The port is ranged reads plus listing by prefix, which is what Parquet needs: the footer
//! is read from the end, then each column chunk by its offset, so a file is never held whole.
//!
//! The trait is synchronous because its callers (Parquet decoding) are: the S3 adapter
//! ([`s3::S3ObjectStore`]) answers from a blocking context (the handler runs decoding on a
//! blocking thread).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

pub mod s3;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key (with the listed prefix).
    pub key: String,
    pub size: u64,
}

/// An object operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("s3://{bucket}/{key}: no such object")]
    NotFound { bucket: String, key: String },
    #[error("bucket {bucket:?} is not known to this object store")]
    UnknownBucket { bucket: String },
    #[error("s3://{bucket}/{key}: invalid key: {reason}")]
    InvalidKey {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("s3://{bucket}/{key}: {message}")]
    Io {
        bucket: String,
        key: String,
        message: String,
        /// Whether the same call may succeed later (a throttle, a timeout).
        retryable: bool,
    },
}

impl ObjectError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ObjectError::Io {
                retryable: true,
                ..
            }
        )
    }
}

/// Read access to objects by bucket and key.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The size of an object in bytes.
    fn size(&self, bucket: &str, key: &str) -> Result<u64, ObjectError>;

    /// `len` bytes of an object from `start` (fewer only at the end of the object).
    fn read_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: usize,
    ) -> Result<Bytes, ObjectError>;

    /// Every object whose key starts with `prefix`, in key order.
    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError>;
}

/// Buckets on the local disk: each bucket name maps to a folder laid out like the bucket.
#[derive(Debug, Clone, Default)]
pub struct LocalBuckets {
    roots: BTreeMap<String, PathBuf>,
}

impl LocalBuckets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves the folder `root` as the bucket `bucket`.
    pub fn with_bucket(mut self, bucket: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        self.roots.insert(bucket.into(), root.into());
        self
    }

    /// Adds a bucket.
    pub fn insert(&mut self, bucket: impl Into<String>, root: impl Into<PathBuf>) {
        self.roots.insert(bucket.into(), root.into());
    }

    /// As an `Arc<dyn ObjectStore>`.
    pub fn shared(self) -> Arc<dyn ObjectStore> {
        Arc::new(self)
    }

    fn root(&self, bucket: &str) -> Result<&Path, ObjectError> {
        self.roots
            .get(bucket)
            .map(PathBuf::as_path)
            .ok_or_else(|| ObjectError::UnknownBucket {
                bucket: bucket.to_owned(),
            })
    }

    /// The file of an object. Keys are `/`-separated and may not climb out of the bucket.
    fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, ObjectError> {
        let root = self.root(bucket)?;
        let invalid = |reason: &str| ObjectError::InvalidKey {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if key.is_empty() {
            return Err(invalid("empty key"));
        }
        let rel = Path::new(key);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(invalid(
                "a local object key may not be absolute or contain `..`",
            ));
        }
        Ok(root.join(rel))
    }

    fn io(bucket: &str, key: &str, e: &std::io::Error) -> ObjectError {
        if e.kind() == std::io::ErrorKind::NotFound {
            ObjectError::NotFound {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }
        } else {
            ObjectError::Io {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                message: e.to_string(),
                retryable: false,
            }
        }
    }
}

impl ObjectStore for LocalBuckets {
    fn size(&self, bucket: &str, key: &str) -> Result<u64, ObjectError> {
        let path = self.path(bucket, key)?;
        let meta = std::fs::metadata(&path).map_err(|e| Self::io(bucket, key, &e))?;
        if !meta.is_file() {
            return Err(ObjectError::NotFound {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        Ok(meta.len())
    }

    fn read_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        len: usize,
    ) -> Result<Bytes, ObjectError> {
        let path = self.path(bucket, key)?;
        let err = |e: std::io::Error| Self::io(bucket, key, &e);
        let mut file = std::fs::File::open(&path).map_err(err)?;
        file.seek(SeekFrom::Start(start)).map_err(err)?;
        let mut buf = Vec::with_capacity(len.min(16 * 1024 * 1024));
        file.take(len as u64).read_to_end(&mut buf).map_err(err)?;
        Ok(Bytes::from(buf))
    }

    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        let root = self.root(bucket)?.to_path_buf();
        // Walk only the folder the prefix names (up to its last `/`), as S3 lists by prefix.
        let start_dir = match prefix.rfind('/') {
            Some(i) => self.path(bucket, &prefix[..i])?,
            None => root.clone(),
        };
        let mut out = Vec::new();
        let mut stack = vec![start_dir];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io(bucket, prefix, &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Self::io(bucket, prefix, &e))?;
                let path = entry.path();
                let kind = entry
                    .file_type()
                    .map_err(|e| Self::io(bucket, prefix, &e))?;
                let Ok(rel) = path.strip_prefix(&root) else {
                    continue;
                };
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if kind.is_dir() {
                    // Only folders that can hold a key with the prefix: a file's own key as
                    // the prefix must not walk the whole tree beside it.
                    let folder = format!("{key}/");
                    if folder.starts_with(prefix) || prefix.starts_with(&folder) {
                        stack.push(path);
                    }
                    continue;
                }
                if key.starts_with(prefix) {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(ObjectMeta { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalBuckets) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bucket");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/one.txt"), b"0123456789").unwrap();
        std::fs::write(root.join("a/two.txt"), b"xy").unwrap();
        std::fs::write(root.join("top.txt"), b"t").unwrap();
        let s = LocalBuckets::new().with_bucket("landing", root);
        (dir, s)
    }

    #[test]
    fn ranged_reads_and_sizes() {
        let (_d, s) = store();
        assert_eq!(s.size("landing", "a/b/one.txt").unwrap(), 10);
        assert_eq!(
            &s.read_range("landing", "a/b/one.txt", 3, 4).unwrap()[..],
            b"3456"
        );
        // Past the end: what there is.
        assert_eq!(
            &s.read_range("landing", "a/b/one.txt", 8, 100).unwrap()[..],
            b"89"
        );
    }

    #[test]
    fn listing_by_prefix_walks_subfolders_in_key_order() {
        let (_d, s) = store();
        let keys: Vec<String> = s
            .list("landing", "a/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/b/one.txt", "a/two.txt"]);
        let all = s.list("landing", "").unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(s.list("landing", "a/t").unwrap()[0].size, 2);
        assert!(s.list("landing", "nothing/here/").unwrap().is_empty());
        // Prefixes that end inside a name, as S3 has them.
        let keys = |prefix: &str| -> Vec<String> {
            s.list("landing", prefix)
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .collect()
        };
        assert_eq!(keys("a"), ["a/b/one.txt", "a/two.txt"]);
        assert_eq!(keys("a/b"), ["a/b/one.txt"]);
        assert_eq!(keys("top.txt"), ["top.txt"]);
        assert_eq!(keys("t"), ["top.txt"]);
    }

    #[test]
    fn missing_objects_unknown_buckets_and_escaping_keys_are_errors() {
        let (_d, s) = store();
        assert!(matches!(
            s.size("landing", "nope.txt"),
            Err(ObjectError::NotFound { .. })
        ));
        assert!(matches!(
            s.size("landing", "a"),
            Err(ObjectError::NotFound { .. })
        ));
        assert!(matches!(
            s.size("other", "a/two.txt"),
            Err(ObjectError::UnknownBucket { .. })
        ));
        assert!(matches!(
            s.read_range("landing", "../bucket/top.txt", 0, 1),
            Err(ObjectError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.size("landing", "/etc/passwd"),
            Err(ObjectError::InvalidKey { .. })
        ));
        let e = s.size("landing", "nope.txt").unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("s3://landing/nope.txt"), "{e}");
    }
}
