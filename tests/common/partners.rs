//! Test partners, their keys (fixed test keys under tests/fixtures/auth) and token minting.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use fhir_unify::config::PipelineConfig;
use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::FhirStore;
use fhir_unify::store::sqlite::SqliteStore;

pub fn auth_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth")
}

pub const ACME_ISS: &str = "https://idp.acme.example";
pub const ACME_AUD: &str = "https://fhir.example/r4";
pub const BETA_ISS: &str = "https://login.beta.example";
pub const BETA_AUD: &str = "fhir-api";

/// A pipeline file with two partners: acme (RS256; Patient, Coverage) and beta (ES256;
/// Patient, Observation).
pub fn pipeline_yaml() -> String {
    let dir = auth_dir();
    format!(
        "sources:
  - name: app
    dynamodb: {{ table: Patients }}
    entities: {{ patients: {{ key: [pk], mapping: m.yaml }} }}
partners:
  - name: acme
    issuer: {ACME_ISS}
    audience: {ACME_AUD}
    jwks: {}
    read: [Patient, Coverage]
  - name: beta
    issuer: {BETA_ISS}
    audience: {BETA_AUD}
    jwks: {}
    read: [Patient, Observation]
",
        dir.join("acme-jwks.json").display(),
        dir.join("beta-jwks.json").display()
    )
}

pub fn pipeline() -> PipelineConfig {
    PipelineConfig::from_yaml(&pipeline_yaml(), Path::new("test.yaml")).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What can be wrong with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    BadSignature,
    UnknownKid,
    NoToken,
    Malformed,
    NotBearer,
}

pub const FAULTS: &[Fault] = &[
    Fault::None,
    Fault::Expired,
    Fault::NotYetValid,
    Fault::WrongAudience,
    Fault::WrongIssuer,
    Fault::BadSignature,
    Fault::UnknownKid,
    Fault::NoToken,
    Fault::Malformed,
    Fault::NotBearer,
];

/// The `Authorization` header a partner's client would send, with `fault` built in.
pub fn authorization(partner: &str, scope: &str, fault: Fault) -> Option<String> {
    let (iss, aud, alg, kid, pem) = match partner {
        "acme" => (
            ACME_ISS,
            ACME_AUD,
            Algorithm::RS256,
            "acme-1",
            "acme-rs256.pem",
        ),
        "beta" => (
            BETA_ISS,
            BETA_AUD,
            Algorithm::ES256,
            "beta-1",
            "beta-es256.pem",
        ),
        other => panic!("no test partner {other}"),
    };
    let t = now();
    let mut claims = json!({
        "iss": iss, "aud": aud, "sub": format!("{partner}-client"),
        "iat": t, "nbf": t - 5, "exp": t + 300, "scope": scope,
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let mut key_file = pem;
    match fault {
        Fault::Expired => {
            claims["exp"] = json!(t - 600);
            claims["nbf"] = json!(t - 900);
        }
        Fault::NotYetValid => claims["nbf"] = json!(t + 600),
        Fault::WrongAudience => claims["aud"] = json!("https://other.example"),
        Fault::WrongIssuer => claims["iss"] = json!("https://evil.example"),
        Fault::BadSignature => {
            // Signed by a key the partner never published, under the partner's kid.
            header = Header::new(Algorithm::RS256);
            header.kid = Some(kid.to_owned());
            key_file = "attacker-rs256.pem";
        }
        Fault::UnknownKid => header.kid = Some("rotated-away".to_owned()),
        Fault::NoToken => return None,
        Fault::Malformed => return Some("Bearer not.a-jwt".to_owned()),
        Fault::None | Fault::NotBearer => {}
    }
    let pem = std::fs::read(auth_dir().join(key_file)).unwrap();
    let key = if header.alg == Algorithm::ES256 {
        EncodingKey::from_ec_pem(&pem).unwrap()
    } else {
        EncodingKey::from_rsa_pem(&pem).unwrap()
    };
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    Some(if fault == Fault::NotBearer {
        format!("Basic {token}")
    } else {
        format!("Bearer {token}")
    })
}

fn lineage(id: &str) -> Lineage {
    Lineage {
        source: "app".into(),
        entity: "patients".into(),
        key: RecordKey::from_pairs([("pk", json!(id))]),
        sequence: Sequence::parse("1").unwrap(),
        observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
    }
}

pub fn upsert(resource: Value) -> ResourceChange {
    let target = ResourceRef {
        resource_type: resource["resourceType"].as_str().unwrap().to_owned(),
        id: resource["id"].as_str().unwrap().to_owned(),
    };
    ResourceChange {
        lineage: lineage(&target.id),
        target,
        op: ResourceOp::Upsert { resource },
    }
}

/// A store with one resource of each type (id `x1`) and `patients` Patients `p001…`.
pub async fn fill(store: &Arc<SqliteStore>, patients: usize) {
    for (t, extra) in [
        (
            "Patient",
            json!({"gender": "female", "name": [{"family": "Smith"}]}),
        ),
        (
            "Coverage",
            json!({"status": "active", "beneficiary": {"reference": "Patient/x1"}}),
        ),
        (
            "Observation",
            json!({"status": "final", "subject": {"reference": "Patient/x1"}}),
        ),
    ] {
        let mut r = extra;
        r["resourceType"] = json!(t);
        r["id"] = json!("x1");
        store.apply(&[upsert(r)]).await.unwrap();
    }
    for i in 1..=patients {
        let r = json!({"resourceType": "Patient", "id": format!("p{i:03}"),
            "gender": if i.is_multiple_of(2) { "male" } else { "female" },
            "name": [{"family": format!("Family{i}"), "given": ["Test"]}]});
        store.apply(&[upsert(r)]).await.unwrap();
    }
}

/// The project's FHIR API (the gateway over a fresh SQLite store, writes on) on a free
/// loopback port: the server a `rest` store talks to in tests. Partner acme may read and write
/// `types`. Returns the base URL, acme's bearer token (without `Bearer `) with `scope`, and a
/// guard that keeps the store and the server alive.
pub async fn fhir_api(
    types: &[&str],
    scope: &str,
) -> (String, String, Box<dyn std::any::Any + Send>) {
    use fhir_unify::gateway::Gateway;
    use fhir_unify::gateway::auth::Authorizer;
    use fhir_unify::gateway::server::{LocalApi, bind, serve};
    let dir = tempfile::tempdir().unwrap();
    let backing = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let types = types.join(", ");
    let yaml = format!(
        "sources:
  - name: app
    dynamodb: {{ table: Patients }}
    entities: {{ patients: {{ key: [pk], mapping: m.yaml }} }}
partners:
  - name: acme
    issuer: {ACME_ISS}
    audience: {ACME_AUD}
    jwks: {}
    read: [{types}]
    write: [{types}]
",
        auth_dir().join("acme-jwks.json").display()
    );
    let config = PipelineConfig::from_yaml(&yaml, Path::new("fhir-api.yaml")).unwrap();
    let api = LocalApi {
        gateway: Gateway::sqlite(backing).allow_writes(),
        authorizer: Authorizer::from_config(&config).unwrap(),
        ingest: None,
        events: None,
    };
    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let handle = tokio::spawn(serve(listener, api));
    let token = authorization("acme", scope, Fault::None).unwrap();
    let token = token.strip_prefix("Bearer ").unwrap().to_owned();
    (format!("http://{addr}"), token, Box::new((dir, handle)))
}
