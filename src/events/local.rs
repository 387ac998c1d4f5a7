//! The local event bus: EventBridge's `PutEvents` contract on one machine, delivering each
//! event, in the envelope a subscriber receives from EventBridge, to an NDJSON file.
//!
//! Delivery to the file is exactly-once across crashes: a write interrupted half-way is cut
//! back to the last complete line when the file is opened again, and an event whose id is
//! already among the file's last lines (written, but the outbox was not marked before the
//! crash) is acknowledged without being written twice.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{BusError, EventBus, LOCAL_PAGE_EVENTS, MAX_ENTRY_BYTES, PutEntryResult, entry_size};
use crate::model::ChangeEvent;

/// The account and region written in local event envelopes.
pub const LOCAL_ACCOUNT: &str = "000000000000";
pub const LOCAL_REGION: &str = "local";

/// How many of the latest delivery keys a writer remembers (read back from the file's end at
/// open, then kept as it writes). An interrupted relay wrote at most one page
/// ([`LOCAL_PAGE_EVENTS`]) that the outbox did not mark; four pages leave room for a retried
/// partial page and for two relays taking turns. Bounded so that memory does not grow with the
/// number of events a process delivers.
pub const RECENT_KEYS: usize = 4 * LOCAL_PAGE_EVENTS;

/// The first window read from the file's end at open; it grows (×4) until it holds
/// [`RECENT_KEYS`] complete lines, the file's start or [`MAX_TAIL_BYTES`].
const TAIL_BYTES: u64 = 256 * 1024;
const MAX_TAIL_BYTES: u64 = 256 * 1024 * 1024;

/// A local bus writing every event to one NDJSON file (the bus of a pipeline without rules,
/// and the building block of the rules bus's NDJSON targets).
#[derive(Debug)]
pub struct NdjsonBus {
    writer: NdjsonWriter,
}

impl NdjsonBus {
    /// Opens (or creates) the file, repairing an interrupted last line.
    pub fn open(path: &Path) -> Result<NdjsonBus, BusError> {
        Ok(NdjsonBus {
            writer: NdjsonWriter::open(path).map_err(|e| BusError::Unavailable(e.to_string()))?,
        })
    }

    /// The file events are written to.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

/// An NDJSON file of delivered envelopes that writes each delivery once, even across crashes.
///
/// A delivery is known by its key: the event id, or for a replayed event the id and the replay
/// name (`id#replay-name`), so a replay is written again while a redelivery is not.
#[derive(Debug)]
pub struct NdjsonWriter {
    path: PathBuf,
    state: Mutex<NdjsonState>,
}

#[derive(Debug)]
struct NdjsonState {
    file: File,
    /// Keys of the deliveries in the file's last lines at open time, plus those written since.
    recent: Recent,
}

/// The last [`RECENT_KEYS`] delivery keys written, oldest first.
#[derive(Debug, Default)]
struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > RECENT_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// An NDJSON file that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct NdjsonError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// The delivery key of an envelope: `id`, or `id#replay-name` for a replayed event.
pub fn delivery_key(envelope: &serde_json::Value) -> Option<String> {
    let id = envelope.get("id")?.as_str()?;
    Some(match envelope.get("replay-name").and_then(|r| r.as_str()) {
        Some(replay) => format!("{id}#{replay}"),
        None => id.to_owned(),
    })
}

impl NdjsonWriter {
    /// Opens (or creates) the file, repairing an interrupted last line.
    pub fn open(path: &Path) -> Result<NdjsonWriter, NdjsonError> {
        let io = |source: std::io::Error| NdjsonError {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let recent = repair_and_read_tail(&mut file).map_err(io)?;
        Ok(NdjsonWriter {
            path: path.to_owned(),
            state: Mutex::new(NdjsonState { file, recent }),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the envelopes not written yet (by delivery key), in order, in one write followed
    /// by one `fsync`; returns how many lines were written.
    pub fn append(&self, envelopes: &[&serde_json::Value]) -> Result<usize, NdjsonError> {
        let lines = Line::serialize_all(envelopes).map_err(|e| NdjsonError {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        self.append_lines(lines)
    }

    /// [`Self::append`] for envelopes already serialized (the local bus serializes each
    /// envelope once, for its archive and its NDJSON targets).
    pub fn append_lines(&self, lines: Vec<Line>) -> Result<usize, NdjsonError> {
        let io = |source: std::io::Error| NdjsonError {
            path: self.path.display().to_string(),
            source,
        };
        let mut state = self
            .state
            .lock()
            .map_err(|_| io(std::io::Error::other("writer lock poisoned")))?;
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum());
        let mut keys = Vec::with_capacity(lines.len());
        let mut in_call = HashSet::new();
        for line in lines {
            if state.recent.contains(&line.key) || in_call.contains(&line.key) {
                continue;
            }
            bytes.extend_from_slice(line.text.as_bytes());
            bytes.push(b'\n');
            in_call.insert(line.key.clone());
            keys.push(line.key);
        }
        if keys.is_empty() {
            return Ok(0);
        }
        state.file.write_all(&bytes).map_err(io)?;
        state.file.sync_data().map_err(io)?;
        let written = keys.len();
        for key in keys {
            state.recent.insert(key);
        }
        Ok(written)
    }
}

/// One envelope serialized for an NDJSON file: its delivery key and its JSON text (one line,
/// without the newline).
#[derive(Debug, Clone)]
pub struct Line {
    key: String,
    text: String,
}

impl Line {
    /// `text` must be `envelope` serialized (`serde_json` writes no newline in compact form).
    pub fn new(envelope: &serde_json::Value, text: String) -> Line {
        Line {
            key: delivery_key(envelope).unwrap_or_default(),
            text,
        }
    }

    /// Each envelope serialized, in order.
    pub fn serialize_all(envelopes: &[&serde_json::Value]) -> serde_json::Result<Vec<Line>> {
        envelopes
            .iter()
            .map(|e| Ok(Line::new(e, serde_json::to_string(e)?)))
            .collect()
    }
}

/// Cuts a partial last line and returns the delivery keys of the last [`RECENT_KEYS`]
/// complete lines (fewer if the file is shorter, or if they do not fit in [`MAX_TAIL_BYTES`]).
fn repair_and_read_tail(file: &mut File) -> std::io::Result<Recent> {
    let len = file.metadata()?.len();
    let mut window = TAIL_BYTES;
    let (start, tail) = loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let lines = tail.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || lines > RECENT_KEYS || window >= MAX_TAIL_BYTES {
            break (start, tail);
        }
        window = window.saturating_mul(4);
    };
    let mut tail = tail;
    let complete = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        // No newline in the window: nothing to learn from the tail, keep the file as is.
        None => return Ok(Recent::default()),
    };
    if complete < tail.len() {
        tracing::warn!(
            bytes = tail.len() - complete,
            "cutting an interrupted event line"
        );
        file.set_len(start + complete as u64)?;
        tail.truncate(complete);
    }
    let mut recent = Recent::default();
    // The first line may be cut by the window's start; it simply fails to parse.
    for line in tail.split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
            && let Some(key) = delivery_key(&v)
        {
            recent.insert(key);
        }
    }
    Ok(recent)
}

#[async_trait]
impl EventBus for NdjsonBus {
    async fn put_events(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        super::check_put_size(events)?;
        self.put(events)
    }

    fn page_size(&self) -> usize {
        LOCAL_PAGE_EVENTS
    }

    async fn put_page(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        super::check_page_size(events)?;
        self.put(events)
    }
}

impl NdjsonBus {
    /// Writes the events in one append and one `fsync`.
    fn put(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        let mut results = Vec::with_capacity(events.len());
        let mut envelopes = Vec::new();
        for event in events {
            let id = event.detail.event_id.clone();
            if entry_size(event) > MAX_ENTRY_BYTES {
                results.push(PutEntryResult::Failed {
                    code: "ValidationException".into(),
                    message: format!("entry for event {id} is larger than 256 KB"),
                });
                continue;
            }
            envelopes.push(event.delivered(LOCAL_ACCOUNT, LOCAL_REGION));
            results.push(PutEntryResult::Accepted(id));
        }
        let refs: Vec<&serde_json::Value> = envelopes.iter().collect();
        self.writer
            .append(&refs)
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeEventDetail, ChangeKind, RecordKey, Sequence};

    fn event(id: &str, version: &str) -> ChangeEvent {
        ChangeEvent::new(
            ChangeKind::Created,
            ChangeEventDetail {
                event_id: ChangeEventDetail::stable_event_id("Patient", id, version),
                resource_type: "Patient".into(),
                id: id.into(),
                version_id: version.into(),
                last_updated: "2024-01-01T00:00:00Z".parse().unwrap(),
                source: "app".into(),
                entity: "patients".into(),
                key: RecordKey::from_pairs([("pk", serde_json::json!(id))]),
                sequence: Sequence::from(1),
            },
        )
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn writes_eventbridge_envelopes_and_refuses_more_than_ten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let bus = NdjsonBus::open(&path).unwrap();
        let r = bus
            .put_events(&[event("a", "1"), event("b", "1")])
            .await
            .unwrap();
        assert!(matches!(r[0], PutEntryResult::Accepted(_)));
        let written = lines(&path);
        assert_eq!(written.len(), 2);
        assert_eq!(written[0]["source"], "fhir-unify");
        assert_eq!(written[0]["detail-type"], "FhirResourceCreated");
        assert_eq!(written[1]["detail"]["id"], "b");
        let eleven: Vec<_> = (0..11).map(|i| event(&i.to_string(), "1")).collect();
        assert!(matches!(
            bus.put_events(&eleven).await,
            Err(BusError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn reopening_neither_repeats_nor_keeps_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        {
            let bus = NdjsonBus::open(&path).unwrap();
            bus.put_events(&[event("a", "1")]).await.unwrap();
        }
        // A crash half-way through writing the next line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"version\":\"0\",\"id\":\"tor")
            .unwrap();
        let bus = NdjsonBus::open(&path).unwrap();
        // "a" was written but (say) not marked delivered: it is acknowledged, not repeated.
        let r = bus
            .put_events(&[event("a", "1"), event("c", "1")])
            .await
            .unwrap();
        assert_eq!(r.len(), 2);
        let written = lines(&path);
        let ids: Vec<_> = written
            .iter()
            .map(|v| v["detail"]["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, vec!["a", "c"]);
    }

    #[test]
    fn the_writer_remembers_a_bounded_window_of_recent_keys_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let envelopes: Vec<serde_json::Value> = (0..RECENT_KEYS + 5)
            .map(|i| event(&format!("p{i}"), "1").delivered(LOCAL_ACCOUNT, LOCAL_REGION))
            .collect();
        let key = |i: usize| delivery_key(&envelopes[i]).unwrap();
        {
            let writer = NdjsonWriter::open(&path).unwrap();
            for page in envelopes.chunks(LOCAL_PAGE_EVENTS) {
                let refs: Vec<&serde_json::Value> = page.iter().collect();
                writer.append(&refs).unwrap();
            }
            let state = writer.state.lock().unwrap();
            assert_eq!(state.recent.order.len(), RECENT_KEYS);
            assert_eq!(state.recent.set.len(), RECENT_KEYS);
            assert!(!state.recent.contains(&key(4)), "the oldest are forgotten");
            assert!(state.recent.contains(&key(5)));
        }
        // Reopened, the writer reads the same window back from the file's end (more than the
        // first 256 KB window), so a page written before a crash is not written again.
        let writer = NdjsonWriter::open(&path).unwrap();
        {
            let state = writer.state.lock().unwrap();
            assert_eq!(state.recent.order.len(), RECENT_KEYS);
            assert!(state.recent.contains(&key(5)));
            assert!(state.recent.contains(&key(RECENT_KEYS + 4)));
        }
        let last_page: Vec<&serde_json::Value> = envelopes[envelopes.len() - LOCAL_PAGE_EVENTS..]
            .iter()
            .collect();
        assert_eq!(writer.append(&last_page).unwrap(), 0);
        assert_eq!(lines(&path).len(), RECENT_KEYS + 5);
    }

    #[tokio::test]
    async fn an_oversized_entry_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let bus = NdjsonBus::open(&dir.path().join("e.ndjson")).unwrap();
        let mut big = event("big", "1");
        big.resources = vec!["x".repeat(MAX_ENTRY_BYTES)];
        let r = bus.put_events(&[event("a", "1"), big]).await.unwrap();
        assert!(matches!(r[0], PutEntryResult::Accepted(_)));
        assert!(
            matches!(&r[1], PutEntryResult::Failed { code, .. } if code == "ValidationException")
        );
    }
}
