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
    }
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
