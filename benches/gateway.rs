//! Gateway read throughput: `cargo bench --bench gateway` (run by `scripts/bench-gateway.sh`).
//!
//! 1. In process: `Gateway::handle` reads of random Patients from a SQLite file store, one
//!    thread (the FHIR logic and the store, no HTTP, no token).
//! 2. Over HTTP on loopback: `fhir-unify serve`'s router (authorizer with an RS256 token on
//!    every request, then the gateway), loaded by `wrk` when it is installed, else by a Rust
//!    loop of keep-alive clients. Prints requests per second and latency percentiles.
//!
//! Figures only; nothing here asserts a time. Under `cargo test --all-targets` (no `--bench`
//! argument) it runs as a quick smoke test: a small store, a few requests, no load.

// A benchmark program: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use fhir_unify::config::PipelineConfig;
use fhir_unify::gateway::auth::{AccessGrant, Authorizer};
use fhir_unify::gateway::server::{LocalApi, ServeOptions, bind, serve_with};
use fhir_unify::gateway::{FhirRequest, Gateway};
use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::FhirStore;
use fhir_unify::store::sqlite::SqliteStore;

/// Sizes of a full run and of the smoke run.
struct Sizes {
    patients: usize,
    reads: usize,
    searches: usize,
    load_seconds: u64,
}

const FULL: Sizes = Sizes {
    patients: 10_000,
    reads: 100_000,
    searches: 5_000,
    load_seconds: 10,
};
const SMOKE: Sizes = Sizes {
    patients: 50,
    reads: 100,
    searches: 10,
    load_seconds: 0,
};

fn change(i: usize) -> ResourceChange {
    let id = format!("p{i:05}");
    ResourceChange {
        target: ResourceRef {
            resource_type: "Patient".into(),
            id: id.clone(),
        },
        op: ResourceOp::Upsert {
            resource: json!({"resourceType": "Patient", "id": id,
                "identifier": [{"system": "urn:mrn", "value": format!("M{i}")}],
                "name": [{"family": format!("Family{}", i % 500), "given": ["Alex", "B"]}],
                "gender": if i.is_multiple_of(2) { "male" } else { "female" },
                "birthDate": format!("19{:02}-0{}-1{}", i % 100, 1 + i % 9, i % 10)}),
        },
        lineage: Lineage {
            source: "bench".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!(i))]),
            sequence: Sequence::parse("1").unwrap(),
            observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
        },
    }
}

fn token() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("acme-1".into());
    let claims = json!({"iss": "https://idp.acme.example", "aud": "https://fhir.example/r4",
        "exp": now + 3600, "nbf": now - 5, "scope": "system/Patient.rs"});
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(dir.join("acme-rs256.pem")).unwrap()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let sizes = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let started = Instant::now();
    rt.block_on(async {
        let changes: Vec<ResourceChange> = (0..sizes.patients).map(change).collect();
        for chunk in changes.chunks(500) {
            store.apply(chunk).await.unwrap();
        }
    });
    println!(
        "store: {} Patients written in {:.2} s",
        sizes.patients,
        started.elapsed().as_secs_f64()
    );
    let gateway = Gateway::sqlite(store);

    // 1. In process.
    let grant = AccessGrant {
        partner: "bench".into(),
        read: ["Patient".to_owned()].into(),
        search: ["Patient".to_owned()].into(),
        write: Default::default(),
    };
    let mut req = FhirRequest {
        method: "GET".into(),
        base_url: "http://bench".into(),
        grant: Some(grant),
        ..FhirRequest::default()
    };
    let n = sizes.reads;
    let t = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            req.path = format!("Patient/p{:05}", (i * 7919) % sizes.patients);
            let r = gateway.handle(&req).await;
            assert_eq!(r.status, 200);
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "in-process reads: {n} in {secs:.2} s = {:.0} reads/s (one thread)",
        n as f64 / secs
    );
    req.path = "Patient".into();
    req.query = vec![
        ("family".into(), "family12".into()),
        ("_count".into(), "20".into()),
    ];
    // At most `searches`, and at most 20 s of them: a slow search must not keep the HTTP
    // figure below from being measured.
    let t = Instant::now();
    let n = rt.block_on(async {
        let mut done = 0;
        while done < sizes.searches && t.elapsed() < Duration::from_secs(20) {
            assert_eq!(gateway.handle(&req).await.status, 200);
            done += 1;
        }
        done
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "in-process searches (family prefix, 20 a page): {n} in {secs:.2} s = {:.1} searches/s",
        n as f64 / secs
    );

    // 2. Over HTTP.
    let yaml = format!(
        "sources:\n  - name: app\n    dynamodb: {{ table: T }}\n    entities: {{ e: {{ key: [k], mapping: m.yaml }} }}\npartners:\n  - {{ name: acme, issuer: 'https://idp.acme.example', audience: 'https://fhir.example/r4', jwks: '{}', read: [Patient] }}\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth/acme-jwks.json")
            .display()
    );
    let config = PipelineConfig::from_yaml(&yaml, Path::new("bench.yaml")).unwrap();
    // Two servers on the same store: `serve`'s default (the authorizer's answer cached per
    // token for 300 s, as API Gateway does) and `--authorizer-cache-ttl 0` (the token verified
    // on every request).
    let token = token();
    for (label, ttl) in [
        ("authorizer cache 300 s (default)", 300),
        ("authorizer cache off (TTL 0)", 0),
    ] {
        let api = LocalApi {
            gateway: gateway.clone(),
            authorizer: Authorizer::from_config(&config).unwrap(),
            ingest: None,
            events: None,
        };
        let options = ServeOptions {
            authorizer_cache_ttl: Duration::from_secs(ttl),
            ..ServeOptions::default()
        };
        let (listener, addr) = rt.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        rt.spawn(serve_with(listener, api, options));
        let url = format!("http://{addr}/Patient/p{:05}", sizes.patients / 2);
        println!("-- {label}");
        load(&sizes, &url, &token);
    }
}

/// Reads `url` under load (wrk if installed, else a Rust loop); one request in a smoke run.
fn load(sizes: &Sizes, url: &str, token: &str) {
    let url = url.to_owned();
    if sizes.load_seconds == 0 {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let r = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        println!("smoke run done (cargo bench --bench gateway for figures)");
        return;
    }
    let seconds = sizes.load_seconds;
    let wrk = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    if wrk {
        let out = std::process::Command::new("wrk")
            .args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(&url)
            .output()
            .unwrap();
        println!("HTTP reads with wrk -t2 -c32 -d{seconds}s --latency:");
        println!("{}", String::from_utf8_lossy(&out.stdout));
        return;
    }
    println!("wrk not found: Rust load loop, 8 keep-alive clients, {seconds} s");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            let auth = format!("Bearer {token}");
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut r = agent
                        .get(&url)
                        .header("Authorization", &auth)
                        .call()
                        .unwrap();
                    let _ = r.body_mut().read_to_vec().unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    println!(
        "HTTP reads: {:.0} req/s, p50 {:?}, p99 {:?}",
        all.len() as f64 / seconds as f64,
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
}
