//! `fhir-unify serve` started as a user starts it, on an ephemeral loopback port, over a
//! store filled with the test resources.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::partners::{fill, pipeline_yaml};
use fhir_unify::store::sqlite::SqliteStore;

/// The server process; killed when the test ends, pass or fail.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start(dir: &std::path::Path) -> Server {
    let data = dir.join("data");
    let store = Arc::new(SqliteStore::open(&data.join("store.db")).unwrap());
    fill(&store, 7).await;
    // A second version of p001, for history.
    use fhir_unify::store::FhirStore;
    store
        .apply(&[super::partners::upsert(serde_json::json!({
            "resourceType": "Patient", "id": "p001", "gender": "female",
            "name": [{"family": "Renamed", "given": ["Test"]}]
        }))])
        .await
        .unwrap();
    drop(store);
    serve(dir, &pipeline_yaml(), &[])
}

/// `fhir-unify serve` of the pipeline file `yaml` (written under `dir`), data under
/// `dir/data`, with `env` added to its environment.
pub fn serve(dir: &std::path::Path, yaml: &str, env: &[(&str, &str)]) -> Server {
    let data = dir.join("data");
    let config = dir.join("fhir-unify.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .envs(env.iter().copied())
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
