//! The change-event ledger's cost per REST-store write: `cargo bench --bench rest_ledger`.
//!
//! The REST store writes to the project's own FHIR API over SQLite (`fhir-unify serve`'s
//! router, in process, on loopback), one Patient per `apply`, with and without a SQLite ledger
//! (intent before the transaction, events and close after: two ledger commits per write),
//! alternating rounds so that both see the same machine load. Prints the mean per write of
//! each and the difference. Figures only; nothing here asserts a time. Under
//! `cargo test --all-targets` it runs as a smoke test (a few writes).

// A benchmark program: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/partners.rs"]
mod partners;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::FhirStore;
use fhir_unify::store::ledger::SqliteLedger;
use fhir_unify::store::rest::{RestAuth, RestOptions, RestStore};
use serde_json::json;

fn change(id: &str) -> ResourceChange {
    ResourceChange {
        target: ResourceRef {
            resource_type: "Patient".into(),
            id: id.into(),
        },
        op: ResourceOp::Upsert {
            resource: json!({"resourceType": "Patient", "id": id, "name": [{"family": id}]}),
        },
        lineage: Lineage {
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!(id))]),
            sequence: Sequence::from(1),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        },
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, per_round) = if full { (6, 200) } else { (2, 3) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (base, token, _server) =
            partners::fhir_api(&["Patient", "Basic"], "system/*.cruds").await;
        let plain = RestStore::new(&base, RestAuth::Bearer(token.clone()), RestOptions::default())
            .unwrap();
        let ledger = Arc::new(SqliteLedger::open(&dir.path().join("ledger.db")).unwrap());
        let with_ledger = plain.clone().with_ledger(ledger.clone());
        let (mut t_plain, mut t_ledger) = (Duration::ZERO, Duration::ZERO);
        let mut n = 0usize;
        for round in 0..rounds {
            for (ledgered, store) in [(false, &plain), (true, &with_ledger)] {
                let started = Instant::now();
                for i in 0..per_round {
                    n += 1;
                    store
                        .apply(&[change(&format!("r{round}-{ledgered}-{i}"))])
                        .await
                        .unwrap();
                }
                let took = started.elapsed();
                if ledgered {
                    t_ledger += took;
                } else {
                    t_plain += took;
                }
            }
        }
        let writes = (rounds * per_round) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / writes;
        println!(
            "rest store, one Patient per apply, {writes} writes each ({n} in all):\n  without ledger: {:.3} ms/write\n  with SQLite ledger: {:.3} ms/write\n  ledger overhead: {:.3} ms/write",
            ms(t_plain),
            ms(t_ledger),
            ms(t_ledger) - ms(t_plain)
        );
        let (pending, open) = ledger.counts().unwrap();
        assert_eq!(open, 0);
        assert_eq!(pending as f64, writes, "one event per ledgered write");
    });
}
