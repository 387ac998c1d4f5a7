//! The object store a distributed Map reads its items from (ItemReader) and writes its results
//! to (ResultWriter): S3 on AWS; locally, [`DirObjectStore`], a directory laid out like the
//! buckets (`ROOT/<bucket>/<key>`).

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Why an object could not be read, listed or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectStoreError {
    /// No such object (S3's `NoSuchKey`).
    #[error("The specified key does not exist. (bucket '{bucket}', key '{key}')")]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The bucket or key cannot name an object (empty, `..`, absolute).
    #[error("invalid bucket or key: '{bucket}/{key}'")]
    InvalidName {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The store failed.
    #[error("object store failure on '{bucket}/{key}': {message}")]
    Io {
        /// The bucket.
        bucket: String,
        /// The key or prefix.
        key: String,
        /// What went wrong.
        message: String,
    },
}

/// One listed object, as `ListObjectsV2` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The entity tag (for a local store, the MD5 of the content in hex, as S3 gives for a
    /// single-part upload), without quotes.
    pub etag: String,
    /// Last modification time.
    pub last_modified: DateTime<Utc>,
}

/// An S3-like object store.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The object's bytes.
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, ObjectStoreError>;
    /// Writes (replaces) an object.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ObjectStoreError>;
    /// The objects whose key starts with `prefix`, in key order.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectStoreError>;
}

/// A directory laid out like buckets: object `s3://b/a/c.json` is the file `ROOT/b/a/c.json`.
#[derive(Debug, Clone)]
pub struct DirObjectStore {
    root: PathBuf,
}

impl DirObjectStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, ObjectStoreError> {
        let bad = || ObjectStoreError::InvalidName {
            bucket: bucket.into(),
            key: key.into(),
        };
        if bucket.is_empty() || bucket.contains(['/', '\\']) || bucket == "." || bucket == ".." {
            return Err(bad());
        }
        let rel = Path::new(key);
        if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad());
        }
        Ok(self.root.join(bucket).join(rel))
    }
}

fn io_error(bucket: &str, key: &str, e: &std::io::Error) -> ObjectStoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ObjectStoreError::NotFound {
            bucket: bucket.into(),
            key: key.into(),
        }
    } else {
        ObjectStoreError::Io {
            bucket: bucket.into(),
            key: key.into(),
            message: e.to_string(),
        }
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    let digest = md5::Md5::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else {
            out.push((key, entry.path()));
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for DirObjectStore {
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, ObjectStoreError> {
        let path = self.path(bucket, key)?;
        tokio::fs::read(&path)
            .await
            .map_err(|e| io_error(bucket, key, &e))
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ObjectStoreError> {
        let path = self.path(bucket, key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_error(bucket, key, &e))?;
        }
        tokio::fs::write(&path, body)
            .await
            .map_err(|e| io_error(bucket, key, &e))
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectStoreError> {
        let dir = self.path(bucket, "x")?;
        let dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut files = Vec::new();
        match walk(&dir, "", &mut files) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ObjectStoreError::NotFound {
                    bucket: bucket.into(),
                    key: prefix.into(),
                });
            }
            Err(e) => return Err(io_error(bucket, prefix, &e)),
        }
        files.retain(|(k, _)| k.starts_with(prefix));
        files.sort();
        let mut out = Vec::with_capacity(files.len());
        for (key, path) in files {
            let body = std::fs::read(&path).map_err(|e| io_error(bucket, &key, &e))?;
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map(DateTime::<Utc>::from)
                .unwrap_or_default();
            out.push(ObjectInfo {
                size: body.len() as u64,
                etag: md5_hex(&body),
                key,
                last_modified: modified,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn put_get_list_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirObjectStore::new(dir.path());
        store.put("b", "in/a.json", b"[1]".to_vec()).await.unwrap();
        store
            .put("b", "in/sub/c.csv", b"x\n1\n".to_vec())
            .await
            .unwrap();
        store.put("b", "other.txt", b"".to_vec()).await.unwrap();
        assert_eq!(store.get("b", "in/a.json").await.unwrap(), b"[1]");
        let listed = store.list("b", "in/").await.unwrap();
        let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["in/a.json", "in/sub/c.csv"]);
        assert_eq!(listed[0].size, 3);
        assert_eq!(listed[0].etag, md5_hex(b"[1]"));
        assert!(matches!(
            store.get("b", "nope").await,
            Err(ObjectStoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.get("b", "../escape").await,
            Err(ObjectStoreError::InvalidName { .. })
        ));
        assert!(matches!(
            store.get("", "k").await,
            Err(ObjectStoreError::InvalidName { .. })
        ));
        assert!(matches!(
            store.list("missing", "").await,
            Err(ObjectStoreError::NotFound { .. })
        ));
    }
}
