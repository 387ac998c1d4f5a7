//! `fhir-unify events`: read the local bus's archive and replay it through the rules.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use serde_json::Value;

use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::events::bus::LocalBus;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List archived events, oldest first: time, kind, resource and version.
    List {
        /// Only events at or after this time (RFC 3339, or a date: 2024-01-31).
        #[arg(long)]
        since: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print each event's envelope whole (JSON Lines).
        #[arg(long)]
        json: bool,
    },
    /// Deliver archived events again through the rules to their targets.
    Replay {
        /// Replay events at or after this time (RFC 3339, or a date: 2024-01-31).
        #[arg(long)]
        since: String,
        /// Only through this rule (default: every rule).
        #[arg(long)]
        rule: Option<String>,
        /// The replay's name, written as `replay-name` in each replayed event.
        #[arg(long)]
        name: Option<String>,
    },
    /// Measure events per second through the local bus with rules, in a temporary folder
    /// (archive, an all-events file, and four pattern rules with NDJSON targets).
    Bench {
        /// Events to put, in PutEvents calls of 10.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
    },
}

/// Parses `--since`: RFC 3339, or a date meaning its midnight UTC.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    bail!(
        "--since {text:?}: expected an RFC 3339 time (2024-01-31T12:00:00Z) or a date (2024-01-31)"
    )
}

pub async fn run(command: EventsCommand, config: &Path, data: &DataDir) -> Result<ExitCode> {
    if let EventsCommand::Bench { events } = command {
        return bench(events).await;
    }
    let config = PipelineConfig::load(config)?;
    let local = config
        .events
        .local
        .as_ref()
        .context("the pipeline file has no local bus (events.local)")?;
    let bus = LocalBus::open(local, data)?;
    match command {
        EventsCommand::List { since, limit, json } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            for e in bus.archive().list(since.as_ref(), 0, limit)? {
                if json {
                    println!("{}", e.envelope);
                } else {
                    println!("{}", describe(&e.envelope));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Replay { since, rule, name } => {
            let since = parse_since(&since)?;
            let name =
                name.unwrap_or_else(|| format!("replay-{}", Utc::now().format("%Y%m%dT%H%M%SZ")));
            let report = bus.replay(&since, rule.as_deref(), &name).await?;
            println!(
                "replay {name}: {} archived events since {}, {} deliveries ({})",
                report.events,
                since.to_rfc3339(),
                report.deliveries,
                rule.map_or_else(|| "all rules".to_owned(), |r| format!("rule {r}"))
            );
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Bench { .. } => Ok(ExitCode::SUCCESS),
    }
}

const BENCH_BUS: &str = r#"
events:
  local:
    ndjson: all.ndjson
    rules:
      - name: patients-changed
        pattern: { detail-type: [FhirResourceCreated, FhirResourceUpdated], detail: { resourceType: [Patient] } }
        targets: [ { ndjson: patients.ndjson } ]
      - name: deletions
        pattern: { detail-type: [{ suffix: Deleted }] }
        targets: [ { ndjson: deletions.ndjson } ]
      - name: clinic-lineage
        pattern: { detail: { source: [{ prefix: clinic }], key: { pk: [{ wildcard: "p-*7" }] } } }
        targets: [ { ndjson: clinic.ndjson } ]
      - name: not-observations
        pattern: { $or: [ { detail: { resourceType: [{ anything-but: [Observation, Condition] }] } }, { detail: { versionId: [{ exists: false }] } } ] }
        targets: [ { ndjson: other.ndjson } ]
sources:
  - name: bench
    dynamodb: { table: Bench }
    entities: { e: { key: [pk], mapping: unused.yaml } }
"#;

/// Puts `n` events through a bus like a pipeline's and reports events per second; then the
/// pattern matcher alone.
async fn bench(n: usize) -> Result<ExitCode> {
    use fhir_unify::events::EventBus;
    use fhir_unify::model::{ChangeEvent, ChangeEventDetail, ChangeKind, RecordKey, Sequence};

    let dir = tempfile_dir()?;
    let config = PipelineConfig::from_yaml(BENCH_BUS, Path::new("bench.yaml"))?;
    let local = config.events.local.as_ref().context("bench bus")?;
    let kinds = [
        ChangeKind::Created,
        ChangeKind::Updated,
        ChangeKind::Deleted,
    ];
    let types = ["Patient", "Observation", "Coverage"];
    let events: Vec<ChangeEvent> = (0..n)
        .map(|i| {
            let id = format!("r{i}");
            ChangeEvent::new(
                kinds[i % 3],
                ChangeEventDetail {
                    event_id: ChangeEventDetail::stable_event_id(types[i % 3], &id, "1"),
                    resource_type: types[(i / 3) % 3].into(),
                    id,
                    version_id: "1".into(),
                    last_updated: Utc::now(),
                    source: if i % 2 == 0 { "clinic-db" } else { "app" }.into(),
                    entity: "patients".into(),
                    key: RecordKey::from_pairs([("pk", serde_json::json!(format!("p-{i}")))]),
                    sequence: Sequence::from(i as u64),
                },
            )
        })
        .collect();
    let default_bus = fhir_unify::config::LocalBusConfig {
        rules: Vec::new(),
        ..local.clone()
    };
    for (label, config, folder) in [
        (
            "default bus: archive + all-events file",
            &default_bus,
            "default",
        ),
        (
            "rules bus: archive + all-events file + 4 rules",
            local,
            "rules",
        ),
    ] {
        let bus = LocalBus::open(config, &DataDir(dir.join(folder)))?;
        let started = std::time::Instant::now();
        let mut failed = 0;
        for chunk in events.chunks(10) {
            failed += bus
                .put_events(chunk)
                .await?
                .iter()
                .filter(|r| !matches!(r, fhir_unify::events::PutEntryResult::Accepted(_)))
                .count();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{label}: {n} events in {elapsed:.2} s = {:.0} events/s ({failed} failed)",
            n as f64 / elapsed
        );
    }

    let envelopes: Vec<Value> = events
        .iter()
        .map(|e| e.delivered("000000000000", "local"))
        .collect();
    let patterns: Vec<fhir_unify::events::pattern::EventPattern> = local
        .rules
        .iter()
        .map(|r| fhir_unify::events::pattern::EventPattern::from_value(&r.pattern_value()))
        .collect::<Result<_, _>>()?;
    let started = std::time::Instant::now();
    let mut matched = 0usize;
    for e in &envelopes {
        matched += patterns.iter().filter(|p| p.matches(e)).count();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let checks = envelopes.len() * patterns.len();
    println!(
        "patterns: {checks} pattern checks in {elapsed:.3} s = {:.0} checks/s ({matched} matched)",
        checks as f64 / elapsed
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fhir-unify-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `time  kind  Type/id  v<version>  (source/entity)`: ids and lineage names, no resource content.
fn describe(e: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let d = &e["detail"];
    format!(
        "{}  {:<20} {}/{}  v{}  ({}/{})",
        s(&e["time"]),
        s(&e["detail-type"]),
        s(&d["resourceType"]),
        s(&d["id"]),
        s(&d["versionId"]),
        s(&d["source"]),
        s(&d["entity"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_date() {
        assert_eq!(
            parse_since("2024-01-31").unwrap().to_rfc3339(),
            "2024-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2024-01-31T12:00:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2024-01-31T10:00:00+00:00"
        );
        assert!(parse_since("yesterday").is_err());
    }
}
