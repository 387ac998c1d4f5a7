//! The authorizer's logic: verify a partner's bearer JWT and turn its SMART scopes and the
//! partner registry into an [`AccessGrant`] — the resource types the caller may read and
//! search. Deny by default: anything not positively allowed is a [`Denial`].
//!
//! A token is checked against the partner registered for its issuer (`partners:` in the
//! pipeline file): the key named by its `kid` in that partner's JWKS (a file, or an `https://`
//! / `http://` URL fetched with ureq and cached for [`JwksPolicy::ttl`], fetched again on an
//! unknown `kid` at most once per [`JwksPolicy::min_refetch`], and denying every token of the
//! partner while the keys are stale and the URL cannot be fetched), algorithm RS256
//! or ES256 only (the JWK's own key type must agree), `iss`, `aud`, `exp` (required) and
//! `nbf`, with [`LEEWAY_SECS`] of clock skew. Verification is `jsonwebtoken`'s.
//!
//! Scopes (claim `scope`, space-separated, or `scp`, a list): SMART v2 `system/<Type|*>.<cruds>`
//! (`r` reads and reads history, `s` searches) and v1 `system/<Type|*>.read` / `.*` (both).
//! Writing through `ingest-api` needs `c` and `u` together (v2 `system/Patient.cu`, or v1
//! `.write` / `.*`) and the type in the partner's `write` list. `patient/` and `user/` scopes and
//! scopes with query parameters grant nothing here. The grant is the partner's `read` (and
//! `write`) list intersected with what the scopes give.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{PartnerConfig, PipelineConfig};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Context keys the authorizer sets and the gateway reads back (values must be scalars for
/// API Gateway, so type lists are space-separated strings).
pub const CONTEXT_PARTNER: &str = "partner";
pub const CONTEXT_READ: &str = "readTypes";
pub const CONTEXT_SEARCH: &str = "searchTypes";
pub const CONTEXT_WRITE: &str = "writeTypes";

/// What a verified caller may do: the types it may read (read, vread, history), search, and
/// write (create and update through `ingest-api`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessGrant {
    pub partner: String,
    pub read: BTreeSet<String>,
    pub search: BTreeSet<String>,
    pub write: BTreeSet<String>,
}

impl AccessGrant {
    pub fn may_read(&self, resource_type: &str) -> bool {
        self.read.contains(resource_type)
    }

    pub fn may_search(&self, resource_type: &str) -> bool {
        self.search.contains(resource_type)
    }

    pub fn may_write(&self, resource_type: &str) -> bool {
        self.write.contains(resource_type)
    }

    /// The authorizer response context.
    pub fn to_context(&self) -> Map<String, Value> {
        let join =
            |s: &BTreeSet<String>| Value::String(s.iter().cloned().collect::<Vec<_>>().join(" "));
        let mut m = Map::new();
        m.insert(
            CONTEXT_PARTNER.to_owned(),
            Value::String(self.partner.clone()),
        );
        m.insert(CONTEXT_READ.to_owned(), join(&self.read));
        m.insert(CONTEXT_SEARCH.to_owned(), join(&self.search));
        m.insert(CONTEXT_WRITE.to_owned(), join(&self.write));
        m
    }

    /// The grant in an authorizer context as API Gateway passes it on (`None` if there is
    /// none: the gateway then allows nothing).
    pub fn from_context(context: &HashMap<String, Value>) -> Option<AccessGrant> {
        let partner = context.get(CONTEXT_PARTNER)?.as_str()?.to_owned();
        let list = |key: &str| -> BTreeSet<String> {
            context
                .get(key)
                .and_then(Value::as_str)
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        Some(AccessGrant {
            partner,
            read: list(CONTEXT_READ),
            search: list(CONTEXT_SEARCH),
            write: list(CONTEXT_WRITE),
        })
    }
}

/// Why a request is denied. Logged (never with the token); the caller only sees "denied".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("no bearer token")]
    NoToken,
    #[error("malformed token or authorization header: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted (RS256, ES256)")]
    Algorithm(String),
    #[error("no partner is registered for this issuer")]
    UnknownIssuer,
    #[error("partner {partner:?}: no key {kid:?} in its JWKS")]
    UnknownKey { partner: String, kid: String },
    #[error("partner {0:?}: its JWKS cannot be fetched")]
    KeysUnavailable(String),
    #[error("partner {0:?}: bad signature")]
    BadSignature(String),
    #[error("partner {0:?}: token expired")]
    Expired(String),
    #[error("partner {0:?}: token not yet valid")]
    NotYetValid(String),
    #[error("partner {0:?}: wrong audience")]
    WrongAudience(String),
    #[error("partner {0:?}: wrong issuer")]
    WrongIssuer(String),
    #[error("partner {0:?}: the token's scopes grant no readable or writable type")]
    NoScope(String),
}

/// A partner registry that cannot be used (fails the cold start).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("partner {partner:?}: JWKS file {file}: {reason}")]
    Jwks {
        partner: String,
        file: PathBuf,
        reason: String,
    },
}

type KeyList = Vec<(String, Algorithm, DecodingKey)>;

/// How JWKS URLs are fetched and cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksPolicy {
    /// How long fetched keys are used before they are fetched again.
    pub ttl: Duration,
    /// The least time between two fetches caused by unknown `kid`s (a token with a random
    /// `kid` must not make the authorizer hammer the partner's server).
    pub min_refetch: Duration,
    /// Time limit of one fetch.
    pub timeout: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        JwksPolicy {
            ttl: Duration::from_secs(300),
            min_refetch: Duration::from_secs(30),
            timeout: Duration::from_secs(3),
        }
    }
}

/// A partner's keys: read once from a file, or fetched from a URL and cached.
#[derive(Clone)]
enum Keys {
    Static(KeyList),
    Remote(Arc<RemoteJwks>),
}

struct RemoteJwks {
    url: String,
    policy: JwksPolicy,
    agent: ureq::Agent,
    cache: Mutex<JwksCache>,
}

#[derive(Default)]
struct JwksCache {
    keys: Arc<KeyList>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl RemoteJwks {
    /// The keys to check a token with `kid` against: the cached ones while fresh (fetched
    /// again, rate-limited, when `kid` is not among them); `None` when they are stale and
    /// cannot be fetched (fail closed).
    fn keys_for(&self, partner: &str, kid: &str) -> Option<Arc<KeyList>> {
        let mut cache = self.cache.lock().ok()?;
        let now = Instant::now();
        let fresh = cache
            .fetched
            .is_some_and(|t| now.duration_since(t) < self.policy.ttl);
        let known = cache.keys.iter().any(|(k, _, _)| k == kid);
        let may_refetch = cache
            .attempted
            .is_none_or(|t| now.duration_since(t) >= self.policy.min_refetch);
        if !fresh || (!known && may_refetch) {
            cache.attempted = Some(now);
            match self.fetch() {
                Ok(keys) => {
                    cache.keys = Arc::new(keys);
                    cache.fetched = Some(now);
                }
                Err(reason) => {
                    tracing::warn!(partner, url = %self.url, %reason, "authorizer: JWKS cannot be fetched");
                    if !fresh {
                        // Stale keys are not trusted: deny until the URL answers again.
                        cache.keys = Arc::new(Vec::new());
                        cache.fetched = None;
                        return None;
                    }
                }
            }
        }
        Some(cache.keys.clone())
    }

    fn fetch(&self) -> Result<KeyList, String> {
        let mut response = self
            .agent
            .get(&self.url)
            .header("accept", "application/json")
            .call()
            .map_err(|e| e.to_string())?;
        if response.status().as_u16() != 200 {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        parse_jwks(&text)
    }
}

/// One registered partner with its keys loaded.
#[derive(Clone)]
struct Partner {
    name: String,
    issuer: String,
    audience: String,
    keys: Keys,
    read: BTreeSet<String>,
    write: BTreeSet<String>,
}

/// Verifies tokens of registered partners.
#[derive(Clone, Default)]
pub struct Authorizer {
    partners: Vec<Partner>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field(
                "partners",
                &self.partners.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    // Typed, so a claim of the wrong JSON type fails decoding instead of being skipped.
    exp: i64,
    #[allow(dead_code)]
    nbf: Option<i64>,
    scope: Option<String>,
    scp: Option<Vec<String>>,
}

impl Authorizer {
    /// The partners of a pipeline file, JWKS files read relative to it (URLs are fetched on
    /// first use, with the default [`JwksPolicy`]).
    pub fn from_config(config: &PipelineConfig) -> Result<Authorizer, AuthError> {
        Self::with_policy(config, JwksPolicy::default())
    }

    /// As [`Self::from_config`], with a JWKS fetch policy of the caller's.
    pub fn with_policy(
        config: &PipelineConfig,
        policy: JwksPolicy,
    ) -> Result<Authorizer, AuthError> {
        let partners = config
            .partners
            .iter()
            .map(|p| load_partner(p, config, policy))
            .collect::<Result<_, _>>()?;
        Ok(Authorizer { partners })
    }

    /// The names of the registered partners.
    pub fn partner_names(&self) -> Vec<&str> {
        self.partners.iter().map(|p| p.name.as_str()).collect()
    }

    /// Verifies the `Authorization` header's bearer token and returns what it allows.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<AccessGrant, Denial> {
        self.authorize_until(authorization).map(|(grant, _)| grant)
    }

    /// As [`Self::authorize`], with the token's `exp` (seconds since the epoch): how long
    /// the grant may be remembered by a cache in front of the authorizer.
    pub fn authorize_until(
        &self,
        authorization: Option<&str>,
    ) -> Result<(AccessGrant, i64), Denial> {
        let header = authorization
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(Denial::NoToken)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Denial::Malformed("not a Bearer authorization".into())),
        };
        let head = jsonwebtoken::decode_header(token)
            .map_err(|e| Denial::Malformed(format!("header: {e}")))?;
        if !matches!(head.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Denial::Algorithm(format!("{:?}", head.alg)));
        }
        let issuer = unverified_issuer(token)?;
        let partner = self
            .partners
            .iter()
            .find(|p| p.issuer == issuer)
            .ok_or(Denial::UnknownIssuer)?;
        let kid = head.kid.unwrap_or_default();
        let keys: Arc<KeyList> = match &partner.keys {
            Keys::Static(k) => Arc::new(k.clone()),
            Keys::Remote(r) => r
                .keys_for(&partner.name, &kid)
                .ok_or_else(|| Denial::KeysUnavailable(partner.name.clone()))?,
        };
        let (_, key_alg, key) =
            keys.iter()
                .find(|(k, _, _)| *k == kid)
                .ok_or_else(|| Denial::UnknownKey {
                    partner: partner.name.clone(),
                    kid: kid.clone(),
                })?;
        if *key_alg != head.alg {
            return Err(Denial::BadSignature(partner.name.clone()));
        }
        let mut validation = Validation::new(head.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&partner.issuer]);
        validation.set_audience(&[&partner.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            let p = partner.name.clone();
            match e.kind() {
                ErrorKind::ExpiredSignature => Denial::Expired(p),
                ErrorKind::ImmatureSignature => Denial::NotYetValid(p),
                ErrorKind::InvalidAudience => Denial::WrongAudience(p),
                ErrorKind::InvalidIssuer => Denial::WrongIssuer(p),
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_) => Denial::BadSignature(p),
                other => Denial::Malformed(format!("partner {p:?}: {other:?}")),
            }
        })?;
        let scopes: Vec<String> = match (data.claims.scope, data.claims.scp) {
            (Some(s), _) => s.split_whitespace().map(str::to_owned).collect(),
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        let grant = grant_for(&partner.name, &partner.read, &partner.write, &scopes);
        if grant.read.is_empty() && grant.search.is_empty() && grant.write.is_empty() {
            return Err(Denial::NoScope(partner.name.clone()));
        }
        Ok((grant, data.claims.exp))
    }
}

fn load_partner(
    p: &PartnerConfig,
    config: &PipelineConfig,
    policy: JwksPolicy,
) -> Result<Partner, AuthError> {
    let source = p.jwks.to_string_lossy();
    let keys = if source.starts_with("https://") || source.starts_with("http://") {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(policy.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Keys::Remote(Arc::new(RemoteJwks {
            url: source.into_owned(),
            policy,
            agent,
            cache: Mutex::new(JwksCache::default()),
        }))
    } else {
        let file = config.resolve(&p.jwks);
        let err = |reason: String| AuthError::Jwks {
            partner: p.name.clone(),
            file: file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| err(format!("cannot read: {e}")))?;
        Keys::Static(parse_jwks(&text).map_err(err)?)
    };
    Ok(Partner {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        audience: p.audience.clone(),
        keys,
        read: p.read.iter().cloned().collect(),
        write: p.write.iter().cloned().collect(),
    })
}

/// The RS256 / ES256 keys of a JWKS document, each with its `kid`.
fn parse_jwks(text: &str) -> Result<KeyList, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            return Err("every key needs a kid".into());
        };
        // The algorithm follows the key type; a JWK `alg` that disagrees is refused.
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        let alg = match &jwk.algorithm {
            P::RSA(_) => Algorithm::RS256,
            P::EllipticCurve(ec) if matches!(ec.curve, jsonwebtoken::jwk::EllipticCurve::P256) => {
                Algorithm::ES256
            }
            _ => {
                return Err(format!(
                    "key {kid:?}: only RSA and P-256 EC keys are accepted"
                ));
            }
        };
        if let Some(declared) = jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{alg:?}")
        {
            return Err(format!(
                "key {kid:?}: alg {declared:?} does not fit the key type"
            ));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
        keys.push((kid, alg, key));
    }
    Ok(keys)
}

/// The `iss` claim before verification, only to pick the partner whose keys then verify it.
fn unverified_issuer(token: &str) -> Result<String, Denial> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| Denial::Malformed("not a JWT".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Denial::Malformed("payload is not base64url".into()))?;
    let claims: Value = serde_json::from_slice(&bytes)
        .map_err(|_| Denial::Malformed("payload is not JSON".into()))?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Denial::UnknownIssuer)
}

/// What one SMART scope allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopePerms {
    pub read: bool,
    pub search: bool,
    /// Create and update (both needed: an update may create).
    pub write: bool,
}

/// What one SMART scope allows: `(type or "*", permissions)`.
pub fn parse_scope(scope: &str) -> Option<(&str, ScopePerms)> {
    let rest = scope.strip_prefix("system/")?;
    let (resource_type, perms) = rest.split_once('.')?;
    if resource_type != "*" && !super::is_type_name(resource_type) {
        return None;
    }
    let all = ScopePerms {
        read: true,
        search: true,
        write: true,
    };
    let perms = match perms {
        "*" => all,
        "read" => ScopePerms {
            write: false,
            ..all
        },
        "write" => ScopePerms {
            write: true,
            ..ScopePerms::default()
        },
        v2 => {
            // SMART v2: a non-empty subsequence of "cruds", in order.
            let mut order = "cruds".chars();
            if v2.is_empty() || !v2.chars().all(|c| order.any(|o| o == c)) {
                return None;
            }
            ScopePerms {
                read: v2.contains('r'),
                search: v2.contains('s'),
                write: v2.contains('c') && v2.contains('u'),
            }
        }
    };
    Some((resource_type, perms))
}

/// The grant a partner's registered types and a token's scopes give.
pub fn grant_for(
    partner: &str,
    readable: &BTreeSet<String>,
    writable: &BTreeSet<String>,
    scopes: &[String],
) -> AccessGrant {
    let mut grant = AccessGrant {
        partner: partner.to_owned(),
        ..AccessGrant::default()
    };
    let fits = |scope_type: &str, t: &str| scope_type == "*" || scope_type == t;
    for (resource_type, perms) in scopes.iter().filter_map(|s| parse_scope(s)) {
        for t in readable.iter().filter(|t| fits(resource_type, t)) {
            if perms.read {
                grant.read.insert(t.clone());
            }
            if perms.search {
                grant.search.insert(t.clone());
            }
        }
        if perms.write {
            for t in writable.iter().filter(|t| fits(resource_type, t)) {
                grant.write.insert(t.clone());
            }
        }
    }
    grant
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(read: bool, search: bool, write: bool) -> ScopePerms {
        ScopePerms {
            read,
            search,
            write,
        }
    }

    #[test]
    fn smart_scopes_v1_and_v2() {
        assert_eq!(
            parse_scope("system/Patient.rs"),
            Some(("Patient", p(true, true, false)))
        );
        assert_eq!(
            parse_scope("system/Patient.r"),
            Some(("Patient", p(true, false, false)))
        );
        assert_eq!(
            parse_scope("system/*.s"),
            Some(("*", p(false, true, false)))
        );
        assert_eq!(
            parse_scope("system/Patient.cruds"),
            Some(("Patient", p(true, true, true)))
        );
        assert_eq!(
            parse_scope("system/Patient.read"),
            Some(("Patient", p(true, true, false)))
        );
        assert_eq!(parse_scope("system/*.*"), Some(("*", p(true, true, true))));
        assert_eq!(
            parse_scope("system/Patient.write"),
            Some(("Patient", p(false, false, true)))
        );
        assert_eq!(
            parse_scope("system/*.cu"),
            Some(("*", p(false, false, true)))
        );
        // Create alone or update alone is not enough to write through the pipeline.
        assert_eq!(
            parse_scope("system/Patient.c"),
            Some(("Patient", p(false, false, false)))
        );
        assert_eq!(
            parse_scope("system/Patient.u"),
            Some(("Patient", p(false, false, false)))
        );
        for none in [
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.uc",
            "system/Patient.",
            "system/Patient.rs?category=x",
            "patient/Patient.rs",
            "user/*.read",
            "user/*.cu",
            "system/patient.rs",
            "openid",
            "system/Patient",
        ] {
            assert_eq!(parse_scope(none), None, "{none}");
        }
    }

    #[test]
    fn grants_intersect_registry_and_scopes_and_round_trip_the_context() {
        let registered: BTreeSet<String> = ["Patient", "Coverage"].map(String::from).into();
        let writable: BTreeSet<String> = ["Patient"].map(String::from).into();
        let g = grant_for(
            "acme",
            &registered,
            &writable,
            &[
                "system/*.r".into(),
                "system/Patient.s".into(),
                "system/Observation.rs".into(),
                "system/*.cu".into(),
            ],
        );
        assert_eq!(g.read, registered);
        assert_eq!(g.search, ["Patient".to_owned()].into());
        assert_eq!(g.write, writable);
        let ctx: HashMap<String, Value> = g.to_context().into_iter().collect();
        assert_eq!(ctx[CONTEXT_READ], "Coverage Patient");
        assert_eq!(ctx[CONTEXT_WRITE], "Patient");
        assert_eq!(AccessGrant::from_context(&ctx), Some(g));
        assert_eq!(AccessGrant::from_context(&HashMap::new()), None);
    }

    /// A JWKS server on loopback: answers every request with the current status and body,
    /// and counts the requests.
    struct JwksServer {
        url: String,
        reply: Arc<Mutex<(u16, String)>>,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn jwks_server(body: String) -> JwksServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let reply = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, h) = (reply.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, body) = r.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer { url, reply, hits }
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/auth")
                .join(name),
        )
        .unwrap()
    }

    fn token(kid: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": "https://idp.acme.example", "aud": "https://fhir.example/r4",
            "exp": now + 300, "nbf": now - 5, "scope": "system/Patient.rs",
        });
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(fixture("acme-rs256.pem").as_bytes()).unwrap();
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        )
    }

    fn authorizer(url: &str, policy: JwksPolicy) -> Authorizer {
        let yaml = format!(
            "sources: [{{name: app, dynamodb: {{table: T}}, entities: {{e: {{key: [k], mapping: m.yaml}}}}}}]\npartners:\n  - {{ name: acme, issuer: 'https://idp.acme.example', audience: 'https://fhir.example/r4', jwks: '{url}', read: [Patient] }}\n"
        );
        let config = PipelineConfig::from_yaml(&yaml, std::path::Path::new("t.yaml")).unwrap();
        Authorizer::with_policy(&config, policy).unwrap()
    }

    fn hits(s: &JwksServer) -> usize {
        s.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn jwks_by_url_is_cached_refetched_on_unknown_kid_and_fails_closed() {
        let server = jwks_server(fixture("acme-jwks.json"));
        let policy = JwksPolicy {
            ttl: Duration::from_secs(600),
            min_refetch: Duration::ZERO,
            timeout: Duration::from_secs(2),
        };
        let auth = authorizer(&server.url, policy);
        assert_eq!(hits(&server), 0, "fetched on first use, not at start");
        assert!(auth.authorize(Some(&token("acme-1"))).is_ok());
        assert!(auth.authorize(Some(&token("acme-1"))).is_ok());
        assert_eq!(hits(&server), 1, "cached");
        // An unknown kid: fetched again, still unknown, denied.
        assert!(matches!(
            auth.authorize(Some(&token("next"))),
            Err(Denial::UnknownKey { .. })
        ));
        assert_eq!(hits(&server), 2);
        // The partner rotates its key id: the new kid is found by a fetch.
        server.reply.lock().unwrap().1 = fixture("acme-jwks.json").replace("acme-1", "acme-2");
        assert!(auth.authorize(Some(&token("acme-2"))).is_ok());
        assert_eq!(hits(&server), 3);

        // Rate limit: unknown kids do not cause a fetch within `min_refetch`.
        let limited = authorizer(
            &server.url,
            JwksPolicy {
                min_refetch: Duration::from_secs(3600),
                ..policy
            },
        );
        assert!(limited.authorize(Some(&token("acme-2"))).is_ok());
        let before = hits(&server);
        for kid in ["x1", "x2", "x3"] {
            assert!(limited.authorize(Some(&token(kid))).is_err());
        }
        assert_eq!(hits(&server), before);

        // Fail closed: stale keys and a URL that fails (500, then nothing listening) deny.
        let stale = authorizer(
            &server.url,
            JwksPolicy {
                ttl: Duration::ZERO,
                ..policy
            },
        );
        assert!(stale.authorize(Some(&token("acme-2"))).is_ok());
        server.reply.lock().unwrap().0 = 500;
        assert_eq!(
            stale.authorize(Some(&token("acme-2"))),
            Err(Denial::KeysUnavailable("acme".into()))
        );
        let gone = authorizer(
            "http://127.0.0.1:9/jwks.json",
            JwksPolicy {
                timeout: Duration::from_millis(500),
                ..policy
            },
        );
        assert_eq!(
            gone.authorize(Some(&token("acme-1"))),
            Err(Denial::KeysUnavailable("acme".into()))
        );
        // A body that is not a JWKS is no better.
        *server.reply.lock().unwrap() = (200, "<html>".into());
        assert!(stale.authorize(Some(&token("acme-2"))).is_err());
    }

    #[test]
    fn authorize_until_gives_the_token_exp() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
        let auth = authorizer(
            &dir.join("acme-jwks.json").display().to_string(),
            JwksPolicy::default(),
        );
        let t = token("acme-1");
        let (grant, exp) = auth.authorize_until(Some(&t)).unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!((now + 290..=now + 300).contains(&exp), "{exp} vs {now}");
        assert_eq!(auth.authorize(Some(&t)).unwrap(), grant);
        assert_eq!(auth.authorize_until(None), Err(Denial::NoToken));
    }

    #[test]
    fn writing_is_denied_by_default() {
        let registered: BTreeSet<String> = ["Patient"].map(String::from).into();
        // A write scope without a `write` list in the registry grants no write.
        let g = grant_for(
            "acme",
            &registered,
            &BTreeSet::new(),
            &["system/*.cruds".into()],
        );
        assert!(g.write.is_empty());
        assert!(g.may_read("Patient"));
        // A registry write list without a write scope grants none either.
        let g = grant_for(
            "acme",
            &registered,
            &registered,
            &["system/Patient.rs".into()],
        );
        assert!(!g.may_write("Patient"));
    }
}
