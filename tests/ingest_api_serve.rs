//! `fhir-unify serve` with an API source: writes under `/ingest` behind the authorizer (write
//! scopes, deny by default), read back through the gateway, and the change events streamed as
//! Server-Sent Events to a real HTTP client while they are committed, resumed with
//! `Last-Event-ID`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod partners;
}

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::partners::{ACME_AUD, ACME_ISS, Fault, auth_dir, authorization};
use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let yaml = format!(
        "events:
  local:
    rules:
      - name: patients
        pattern: {{ detail: {{ resourceType: [Patient] }} }}
        targets: [ {{ sse: {{ stream: patients }} }} ]
sources:
  - name: partner
    api: {{ path: /ingest/partner, fhir: [Patient, Observation] }}
    entities:
      members: {{ key: [member_id], mapping: {} }}
partners:
  - name: acme
    issuer: {ACME_ISS}
    audience: {ACME_AUD}
    jwks: {}
    read: [Patient]
    write: [Patient]
",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/api/partner-members.yaml")
            .display(),
        auth_dir().join("acme-jwks.json").display()
    );
    let config = dir.join("fhir-unify.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    Server { child, base }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn send(method: &str, url: &str, token: Option<&str>, ctype: &str, body: &str) -> (u16, Value) {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", ctype);
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let mut resp = agent().run(req.body(body.to_owned()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn patient(family: &str) -> String {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": family}], "name": [{"family": family}]})
        .to_string()
}

/// Reads SSE events (id, data) from a streaming response body on a thread.
fn sse_reader(
    url: String,
    token: String,
    last_event_id: Option<String>,
) -> mpsc::Receiver<(String, Value)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut req = agent().get(&url).header("authorization", &token);
        if let Some(id) = &last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let reader = BufReader::new(resp.into_body().into_reader());
        let (mut id, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            } else if line.is_empty() && !data.is_empty() {
                let value = serde_json::from_str(&data).unwrap();
                if tx.send((std::mem::take(&mut id), value)).is_err() {
                    return;
                }
                data.clear();
            }
        }
    });
    rx
}

#[test]
fn writes_need_a_write_scope_and_events_stream_while_committed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let base = &server.base;
    let create = format!("{base}/ingest/partner/fhir/Patient");

    // Deny by default: no token, a read-only token, a write scope for a type not registered.
    let (status, _) = send(
        "POST",
        &create,
        None,
        "application/fhir+json",
        &patient("A"),
    );
    assert_eq!(status, 401);
    let read_only = authorization("acme", "system/Patient.rs", Fault::None).unwrap();
    let (status, body) = send(
        "POST",
        &create,
        Some(&read_only),
        "application/fhir+json",
        &patient("A"),
    );
    assert_eq!(status, 403, "{body}");
    let writer = authorization("acme", "system/Patient.rs system/*.cu", Fault::None).unwrap();
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    let (status, _) = send(
        "POST",
        &format!("{base}/ingest/partner/fhir/Observation"),
        Some(&writer),
        "application/fhir+json",
        &obs.to_string(),
    );
    assert_eq!(status, 403, "Observation is not in acme's write list");

    // The event stream, opened before anything is written.
    let stream = format!("{base}/events/stream?stream=patients");
    let events = sse_reader(stream.clone(), writer.clone(), None);

    // A write with the scope: created, readable through the gateway.
    let (status, body) = send(
        "POST",
        &create,
        Some(&writer),
        "application/fhir+json",
        &patient("Ames"),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let mut resp = agent()
        .get(&format!("{base}/Patient/{id}"))
        .header("authorization", &read_only)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let read: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(read["name"][0]["family"], "Ames");
    // A body that is not JSON: an OperationOutcome naming the place.
    let (status, body) = send(
        "POST",
        &create,
        Some(&writer),
        "application/fhir+json",
        "{oops",
    );
    assert_eq!(status, 400);
    assert_eq!(body["resourceType"], "OperationOutcome");
    // A source record through the same mount.
    let (status, body) = send(
        "POST",
        &format!("{base}/ingest/partner/members"),
        Some(&writer),
        "application/json",
        &json!({"member_id": "m-9", "last_name": "Berg"}).to_string(),
    );
    assert_eq!(status, 201, "{body}");

    // Both creations arrive on the stream, in commit order, with their event ids.
    let wait = Duration::from_secs(20);
    let (first_id, first) = events.recv_timeout(wait).unwrap();
    assert_eq!(first["detail-type"], "FhirResourceCreated");
    assert_eq!(first["detail"]["id"], id.as_str());
    let (_, second) = events.recv_timeout(wait).unwrap();
    assert_eq!(second["detail"]["source"], "partner");
    assert_eq!(second["detail"]["entity"], "members");

    // A client that reconnects after the first event gets the second from the archive, then
    // the next live one, and nothing twice.
    let resumed = sse_reader(stream.clone(), writer.clone(), Some(first_id));
    let (_, again) = resumed.recv_timeout(wait).unwrap();
    assert_eq!(again["id"], second["id"]);
    let (status, _) = send(
        "POST",
        &create,
        Some(&writer),
        "application/fhir+json",
        &patient("Cole"),
    );
    assert_eq!(status, 201);
    let (_, live) = resumed.recv_timeout(wait).unwrap();
    assert_eq!(live["detail"]["resourceType"], "Patient");
    assert_ne!(live["id"], second["id"]);
    assert!(resumed.recv_timeout(Duration::from_millis(1500)).is_err());

    // The stream needs a token and an existing stream name.
    let mut resp = agent().get(&stream).call().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let _ = resp.body_mut().read_to_string();
    let mut resp = agent()
        .get(&format!("{base}/events/stream?stream=nope"))
        .header("authorization", &writer)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let mut buf = String::new();
    resp.body_mut()
        .as_reader()
        .read_to_string(&mut buf)
        .unwrap();
    assert!(buf.contains("OperationOutcome"));
}
