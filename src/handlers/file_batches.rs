//! Batching of the changes read from announced files (`ingest-dms`, `ingest-transfer`) into
//! `unify` runs: at most [`FLUSH_CHANGES`] changes a batch, never two files in one batch, and
//! batch ids derived from the object (`<kind>-<v5 uuid of s3://bucket/key[?versionId=v]>-<part>`),
//! so a redelivered event makes the same ids and `unify` treats the repeat as one.

use uuid::Uuid;

use crate::env::{IngestEnv, WorkflowRun};
use crate::model::{ChangeBatch, SourceChange};

use super::HandlerError;
use super::ingest_dynamodb::run_unify_chunked;

/// The most changes gathered before a batch is handed to `unify` (bounded memory).
pub const FLUSH_CHANGES: usize = 2_000;

/// How many decoded rows may wait between a reading thread and its handler.
pub(super) const CHANNEL_ROWS: usize = 1_024;

/// The name a batch id is derived from: the object's URI, with its version when S3 gave one.
pub(super) fn object_name(bucket: &str, key: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("s3://{bucket}/{key}?versionId={v}"),
        None => format!("s3://{bucket}/{key}"),
    }
}

/// The changes of the files of one event, in file order, on their way to `unify`.
pub(super) struct FileBatches<'a> {
    env: &'a IngestEnv,
    kind: &'static str,
    namespace: Uuid,
    /// [`object_name`] of each file, in the order they are read.
    objects: Vec<String>,
    file: usize,
    part: usize,
    pending: Vec<SourceChange>,
    /// Changes handed to `unify`.
    pub records_in: usize,
    pub runs: Vec<WorkflowRun>,
}

impl<'a> FileBatches<'a> {
    pub fn new(
        env: &'a IngestEnv,
        kind: &'static str,
        namespace: Uuid,
        objects: Vec<String>,
    ) -> Self {
        Self {
            env,
            kind,
            namespace,
            objects,
            file: 0,
            part: 0,
            pending: Vec::new(),
            records_in: 0,
            runs: Vec::new(),
        }
    }

    /// A change of the current file; a full batch goes to `unify` at once.
    pub async fn push(&mut self, change: SourceChange) -> Result<(), HandlerError> {
        self.pending.push(change);
        if self.pending.len() >= FLUSH_CHANGES {
            self.flush().await?;
        }
        Ok(())
    }

    /// The current file is read: its last changes go to `unify`, and the next file starts.
    pub async fn end_file(&mut self) -> Result<(), HandlerError> {
        self.flush().await?;
        self.skip_file();
        Ok(())
    }

    /// The current file was not read (it made no changes): the next file starts.
    pub fn skip_file(&mut self) {
        self.file += 1;
        self.part = 0;
    }

    /// Every part number is used once per file, empty or not, so ids stay stable whatever
    /// the batch boundaries of an earlier delivery were.
    async fn flush(&mut self) -> Result<(), HandlerError> {
        self.part += 1;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = ChangeBatch {
            batch_id: self.batch_id(),
            changes: std::mem::take(&mut self.pending),
        };
        self.records_in += batch.changes.len();
        self.runs.extend(run_unify_chunked(self.env, batch).await?);
        Ok(())
    }

    fn batch_id(&self) -> String {
        let name = self.objects.get(self.file).map_or("", String::as_str);
        batch_id(self.kind, &self.namespace, name, self.part)
    }
}

/// `<kind>-<v5 uuid of the object's name>-<part>`. These ids name `unify` executions, which
/// is what makes a redelivered event a repeat: the format must never change.
fn batch_id(kind: &str, namespace: &Uuid, object: &str, part: usize) -> String {
    let id = Uuid::new_v5(namespace, object.as_bytes());
    format!("{kind}-{id}-{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_carry_the_version_when_there_is_one() {
        assert_eq!(object_name("b", "k/x.csv", None), "s3://b/k/x.csv");
        assert_eq!(
            object_name("b", "k/x.csv", Some("v1")),
            "s3://b/k/x.csv?versionId=v1"
        );
    }

    #[test]
    fn batch_ids_keep_the_format_of_earlier_releases() {
        let ns = Uuid::from_u128(0x9b2e_4d71_0c3a_4e8f_a6d5_37c1_e08b_5f24);
        assert_eq!(
            batch_id("dms", &ns, "s3://b/k", 2),
            format!("dms-{}-2", Uuid::new_v5(&ns, b"s3://b/k"))
        );
    }
}
