//! The pipeline file (`fhir-unify.yaml`): one file that says what the pipeline is — where the
//! store is, where events go, and each source with its entities, keys and mapping files.
//!
//! It is read once at start and checked whole: an unknown key, a missing mapping file, a
//! mapping whose source/entity disagrees with the entry naming it, all fail the start with
//! the file, the line where there is one, and the reason.
//!
//! Relative paths of mapping files and local stream folders resolve against the pipeline
//! file's folder; relative store and event paths resolve against the data folder.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mapping::{Mapping, MappingSet};
use crate::sources::dynamodb::StreamBinding;

/// A pipeline file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file at fault (the pipeline file or a mapping file it names).
    pub file: String,
    /// What is wrong, with `line L column C` where known.
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            message: message.into(),
        }
    }
}

/// The whole pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    #[serde(default)]
    pub local: LocalConfig,
    pub sources: Vec<SourceConfig>,
    /// Partners that may read through the FHIR API, and which resource types each may read.
    #[serde(default)]
    pub partners: Vec<PartnerConfig>,
    /// The folder of the pipeline file (relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The pipeline file itself.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Which FHIR store to use (one key: the kind of store).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The embedded SQLite store.
    pub sqlite: Option<SqliteStoreConfig>,
}

/// The embedded SQLite store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteStoreConfig {
    /// The database file, relative to the data folder.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            sqlite: Some(SqliteStoreConfig {
                path: PathBuf::from("store.db"),
            }),
        }
    }
}

impl StoreConfig {
    /// The SQLite database file, relative to the data folder.
    pub fn sqlite_path(&self) -> &Path {
        self.sqlite
            .as_ref()
            .map_or(Path::new("store.db"), |s| s.path.as_path())
    }
}

/// Where change events go (one key: the kind of bus).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// The local bus.
    pub local: Option<LocalBusConfig>,
}

/// The local bus: every event delivered to an NDJSON file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBusConfig {
    /// The event file, relative to the data folder.
    pub ndjson: PathBuf,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            local: Some(LocalBusConfig {
                ndjson: PathBuf::from("events.ndjson"),
            }),
        }
    }
}

impl EventsConfig {
    /// The local bus's event file, relative to the data folder.
    pub fn ndjson_path(&self) -> &Path {
        self.local
            .as_ref()
            .map_or(Path::new("events.ndjson"), |l| l.ndjson.as_path())
    }
}

/// The quarantine queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Queue name (the SQS queue on AWS; a table of the local queue database locally).
    #[serde(default = "default_quarantine_queue")]
    pub queue: String,
}

fn default_quarantine_queue() -> String {
    "fhir-unify-quarantine".to_owned()
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            queue: default_quarantine_queue(),
        }
    }
}

/// Settings of the local runtime only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// How often the local stream poller re-delivers records an ingest function reported as
    /// failed before sending them to quarantine (Lambda's `MaximumRetryAttempts`).
    #[serde(default = "default_stream_retries")]
    pub stream_max_retry_attempts: u32,
}

fn default_stream_retries() -> u32 {
    2
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            stream_max_retry_attempts: default_stream_retries(),
        }
    }
}

/// A partner of the FHIR API: who issues its tokens, for which audience, with which keys,
/// and the resource types it may read (its tokens' scopes can only narrow this).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    pub name: String,
    /// The `iss` of its tokens (one partner per issuer).
    pub issuer: String,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// A JWKS file with its signing keys (relative to the pipeline file).
    pub jwks: PathBuf,
    /// Resource types it may read, e.g. `[Patient, Coverage]`.
    pub read: Vec<String>,
}

/// One source system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// A DynamoDB table whose stream feeds the pipeline.
    #[serde(default)]
    pub dynamodb: Option<DynamoDbSource>,
    /// The entities of the source, by name.
    pub entities: BTreeMap<String, EntityConfig>,
}

/// A DynamoDB table with a stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbSource {
    pub table: String,
    /// Local runtime only: a folder of DynamoDB Streams Lambda events (`*.json`), delivered
    /// in file-name order as the table's stream.
    #[serde(default)]
    pub local_stream: Option<PathBuf>,
}

/// One entity of a source: how its records are keyed and mapped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// The key attributes of a record.
    pub key: Vec<String>,
    /// The mapping file (relative to the pipeline file).
    pub mapping: PathBuf,
}

impl PipelineConfig {
    /// Reads and checks a pipeline file (mapping files are checked by [`Self::load_mappings`]).
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        let mut config = PipelineConfig::from_yaml(&text, path)?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        config.file = path.to_path_buf();
        Ok(config)
    }

    /// Parses and checks pipeline YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<PipelineConfig, ConfigError> {
        let config: PipelineConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::new(origin, e.to_string()))?;
        config.check(origin)?;
        Ok(config)
    }

    fn check(&self, origin: &Path) -> Result<(), ConfigError> {
        if self.store.sqlite.is_none() {
            return Err(ConfigError::new(
                origin,
                "store: name one store kind (`sqlite`)",
            ));
        }
        if self.events.local.is_none() {
            return Err(ConfigError::new(
                origin,
                "events: name one bus kind (`local`)",
            ));
        }
        if self.sources.is_empty() {
            return Err(ConfigError::new(
                origin,
                "sources: at least one source is needed",
            ));
        }
        let mut names = HashSet::new();
        let mut tables = HashSet::new();
        for s in &self.sources {
            let at = |msg: String| ConfigError::new(origin, format!("source {:?}: {msg}", s.name));
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(at("source names must be unique and not empty".into()));
            }
            if s.entities.is_empty() {
                return Err(at("entities: at least one entity is needed".into()));
            }
            for (name, e) in &s.entities {
                if e.key.is_empty() || e.key.iter().any(String::is_empty) {
                    return Err(at(format!(
                        "entity {name:?}: key must name at least one attribute"
                    )));
                }
            }
            match &s.dynamodb {
                None => return Err(at("says no source kind (expected `dynamodb`)".into())),
                Some(d) => {
                    if s.entities.len() != 1 {
                        return Err(at(format!(
                            "a dynamodb source maps its table to exactly one entity; {} given",
                            s.entities.len()
                        )));
                    }
                    if !tables.insert(d.table.as_str()) {
                        return Err(at(format!(
                            "table {:?} is already used by another source",
                            d.table
                        )));
                    }
                }
            }
        }
        self.check_partners(origin)
    }

    fn check_partners(&self, origin: &Path) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        for p in &self.partners {
            let at = |msg: String| ConfigError::new(origin, format!("partner {:?}: {msg}", p.name));
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(at("partner names must be unique and not empty".into()));
            }
            if p.issuer.is_empty() || !issuers.insert(p.issuer.as_str()) {
                return Err(at(
                    "issuer must be set and not shared with another partner".into()
                ));
            }
            if p.audience.is_empty() {
                return Err(at("audience must be set".into()));
            }
            if p.read.is_empty() {
                return Err(at("read: name at least one resource type".into()));
            }
            if let Some(t) = p.read.iter().find(|t| {
                !t.starts_with(|c: char| c.is_ascii_uppercase())
                    || !t.bytes().all(|b| b.is_ascii_alphabetic())
            }) {
                return Err(at(format!("read: {t:?} is not a resource type name")));
            }
        }
        Ok(())
    }

    /// Resolves a path relative to the pipeline file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Loads every mapping file named by the sources, checking each says the source and entity
    /// that name it.
    pub fn load_mappings(&self) -> Result<MappingSet, ConfigError> {
        let mut set = MappingSet::new();
        for s in &self.sources {
            for (entity, e) in &s.entities {
                let path = self.resolve(&e.mapping);
                let mapping =
                    Mapping::load(&path).map_err(|err| ConfigError::new(&path, err.to_string()))?;
                if mapping.source() != s.name || mapping.entity() != entity {
                    return Err(ConfigError::new(
                        &path,
                        format!(
                            "maps {}/{}, but {} names it for {}/{entity}",
                            mapping.source(),
                            mapping.entity(),
                            self.file.display(),
                            s.name
                        ),
                    ));
                }
                set.insert(mapping)
                    .map_err(|err| ConfigError::new(&path, err.to_string()))?;
            }
        }
        Ok(set)
    }

    /// The stream binding of a DynamoDB table, if a source reads it.
    pub fn dynamodb_binding(&self, table: &str) -> Option<StreamBinding> {
        self.sources.iter().find_map(|s| {
            let d = s.dynamodb.as_ref()?;
            if d.table != table {
                return None;
            }
            let (entity, e) = s.entities.iter().next()?;
            Some(StreamBinding {
                source: s.name.clone(),
                entity: entity.clone(),
                key: e.key.clone(),
            })
        })
    }
}

/// Where the data of a local run lives: the store, the queue, the event file.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A path relative to the data folder (absolute paths stay as they are).
    pub fn join(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
sources:
  - name: app
    dynamodb: { table: Patients }
    entities:
      patients: { key: [pk], mapping: mappings/patients.yaml }
";

    #[test]
    fn defaults_and_binding() {
        let c = PipelineConfig::from_yaml(GOOD, Path::new("p.yaml")).unwrap();
        assert_eq!(c.store.sqlite_path(), Path::new("store.db"));
        assert_eq!(c.quarantine.queue, "fhir-unify-quarantine");
        let b = c.dynamodb_binding("Patients").unwrap();
        assert_eq!((b.source.as_str(), b.entity.as_str()), ("app", "patients"));
        assert_eq!(b.key, vec!["pk".to_owned()]);
        assert!(c.dynamodb_binding("Other").is_none());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_line() {
        let bad = GOOD.replace("entities:", "entitys:");
        let e = PipelineConfig::from_yaml(&bad, Path::new("p.yaml")).unwrap_err();
        assert_eq!(e.file, "p.yaml");
        assert!(e.message.contains("entitys"), "{e}");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_source() {
        let no_kind = "sources:\n  - name: x\n    entities: { e: { key: [k], mapping: m.yaml } }\n";
        let e = PipelineConfig::from_yaml(no_kind, Path::new("p.yaml")).unwrap_err();
        assert!(
            e.message.contains("\"x\"") && e.message.contains("dynamodb"),
            "{e}"
        );
        let dup = format!(
            "{GOOD}  - name: app\n    dynamodb: {{ table: T2 }}\n    entities: {{ e: {{ key: [k], mapping: m.yaml }} }}\n"
        );
        assert!(PipelineConfig::from_yaml(&dup, Path::new("p.yaml")).is_err());
        let empty_key = GOOD.replace("key: [pk]", "key: []");
        assert!(PipelineConfig::from_yaml(&empty_key, Path::new("p.yaml")).is_err());
        assert!(PipelineConfig::from_yaml("sources: []", Path::new("p.yaml")).is_err());
    }

    #[test]
    fn partners_are_read_and_checked() {
        let with = |p: &str| format!("{GOOD}partners:\n{p}");
        let c = PipelineConfig::from_yaml(
            &with("  - { name: acme, issuer: https://idp, audience: fhir, jwks: k.json, read: [Patient] }\n"),
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(c.partners[0].read, vec!["Patient".to_owned()]);
        assert!(
            PipelineConfig::from_yaml(GOOD, Path::new("p.yaml"))
                .unwrap()
                .partners
                .is_empty()
        );
        for bad in [
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [] }\n",
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [patient] }\n",
            "  - { name: acme, issuer: i, audience: '', jwks: k, read: [Patient] }\n",
            "  - { name: a, issuer: i, audience: a, jwks: k, read: [Patient] }\n  - { name: b, issuer: i, audience: a, jwks: k, read: [Patient] }\n",
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [Patient], write: [Patient] }\n",
        ] {
            assert!(
                PipelineConfig::from_yaml(&with(bad), Path::new("p.yaml")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_mapping_file_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fhir-unify.yaml");
        std::fs::write(&p, GOOD).unwrap();
        let c = PipelineConfig::load(&p).unwrap();
        let e = c.load_mappings().unwrap_err();
        assert!(e.file.ends_with("patients.yaml"), "{e}");
    }
}
