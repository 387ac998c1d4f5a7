//! The write interactions of a FHIR server, so that the API can be the target of the `rest`
//! store (`store::rest`) — and so the shared store suite runs against it: `PUT Type/id`
//! (create or update; `If-Match: W/"v"` on the current version, `If-None-Match: *` for "only
//! if it does not exist"), `DELETE Type/id` (`If-Match` too), and `POST` of a `transaction`
//! Bundle at the base (entries `PUT`/`DELETE` with `request.ifMatch`/`ifNoneMatch`), applied
//! all or nothing.
//!
//! Off unless the gateway was built with [`Gateway::allow_writes`]: these writes go straight
//! to the store, without the pipeline's mapping and validation (that path is `ingest-api`).
//! When on, each type written needs the grant's write permission (`system/X.cu` and the
//! partner's `write:` list), as `ingest-api` does.
//!
//! Versions are checked and the store written under one lock per gateway, so two writers of
//! the same version cannot both pass `If-Match`. Every write is a change of the source
//! [`WRITE_SOURCE`] with sequence 0: the API's own writes never go stale to one another.

use serde_json::{Value, json};

use super::{AccessGrant, FhirRequest, FhirResponse, Gateway, Refusal, etag, http_date, target};
use crate::model::{
    Lineage, PublishAction, PublishOutcome, RecordKey, ResourceChange, ResourceOp, ResourceRef,
    Sequence,
};
use crate::store::{StoredVersion, format_time, is_fhir_id};

/// The lineage source of writes through the API.
pub const WRITE_SOURCE: &str = "fhir-api";

/// The parts of a request only writes need.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteParts<'a> {
    /// The request body (text).
    pub body: Option<&'a str>,
    /// The `If-Match` header.
    pub if_match: Option<&'a str>,
}

/// One write, checked.
#[derive(Debug, Clone)]
struct Write {
    target: ResourceRef,
    op: ResourceOp,
    if_match: Option<String>,
    if_none_match: Option<String>,
    /// How errors name it: `Patient/1` or `entry 3 (Patient/1)`.
    label: String,
}

impl Gateway {
    pub(super) async fn write(
        &self,
        req: &FhirRequest,
        grant: &AccessGrant,
        segments: &[&str],
        parts: WriteParts<'_>,
    ) -> Result<FhirResponse, Refusal> {
        if !self.writes {
            return Err(Refusal::new(
                405,
                "not-supported",
                format!("{} is not supported: this API is read-only", req.method),
            ));
        }
        match (req.method.as_str(), segments) {
            ("PUT", [t, id]) => {
                let resource = parse_body(parts.body, &format!("{t}/{id}"))?;
                let w = instance_write(t, id, Some(resource), &format!("{t}/{id}"))?;
                let w = Write {
                    if_match: parts.if_match.map(str::to_owned),
                    if_none_match: req.if_none_match.clone(),
                    ..w
                };
                let (w, outcome) = self.commit(grant, vec![w]).await?.remove(0);
                self.single_response(req, &w, &outcome).await
            }
            ("DELETE", [t, id]) => {
                let w = instance_write(t, id, None, &format!("{t}/{id}"))?;
                let w = Write {
                    if_match: parts.if_match.map(str::to_owned),
                    ..w
                };
                let (w, outcome) = self.commit(grant, vec![w]).await?.remove(0);
                self.single_response(req, &w, &outcome).await
            }
            ("POST", []) => self.transaction(req, grant, parts).await,
            ("POST", [t]) => Err(Refusal::new(
                405,
                "not-supported",
                format!("create with a server-assigned id is not supported: PUT {t}/<id>"),
            )),
            (m, _) => Err(Refusal::new(
                405,
                "not-supported",
                format!(
                    "{m} {:?} is not supported: PUT or DELETE Type/id, or POST a transaction Bundle at the base",
                    req.path
                ),
            )),
        }
    }

    /// Checks grants and preconditions, then applies every write in one store call.
    async fn commit(
        &self,
        grant: &AccessGrant,
        writes: Vec<Write>,
    ) -> Result<Vec<(Write, PublishOutcome)>, Refusal> {
        let mut seen = std::collections::HashSet::new();
        for w in &writes {
            if !grant.may_write(&w.target.resource_type) {
                tracing::info!(partner = %grant.partner, resource_type = %w.target.resource_type, "gateway: write denied by grant");
                return Err(Refusal::forbidden(format!(
                    "{}: partner {:?} may not write {}",
                    w.label, grant.partner, w.target.resource_type
                )));
            }
            if !seen.insert(w.target.clone()) {
                return Err(Refusal::bad_request(format!(
                    "{}: the Bundle names {} twice",
                    w.label, w.target
                )));
            }
        }
        let _guard = self.write_lock.lock().await;
        for w in &writes {
            let current = self
                .store
                .read(&w.target)
                .await
                .map_err(|e| Refusal::from_store(&e))?;
            check_preconditions(w, current.as_ref())?;
        }
        let now = chrono::Utc::now();
        let changes: Vec<ResourceChange> = writes
            .iter()
            .map(|w| ResourceChange {
                target: w.target.clone(),
                op: w.op.clone(),
                lineage: Lineage {
                    source: WRITE_SOURCE.to_owned(),
                    entity: w.target.resource_type.clone(),
                    key: RecordKey::from_pairs([("id", Value::String(w.target.id.clone()))]),
                    sequence: Sequence::from(0),
                    observed_at: now,
                },
            })
            .collect();
        let outcomes = self
            .store
            .apply(&changes)
            .await
            .map_err(|e| Refusal::from_store(&e))?;
        tracing::info!(partner = %grant.partner, writes = changes.len(), "gateway: written");
        Ok(writes.into_iter().zip(outcomes).collect())
    }

    async fn single_response(
        &self,
        req: &FhirRequest,
        w: &Write,
        outcome: &PublishOutcome,
    ) -> Result<FhirResponse, Refusal> {
        let mut headers = version_headers(req, &w.target, outcome);
        if matches!(w.op, ResourceOp::Delete) {
            return Ok(FhirResponse {
                status: 204,
                headers,
                body: None,
            });
        }
        let current: Option<StoredVersion> = self
            .store
            .read(&w.target)
            .await
            .map_err(|e| Refusal::from_store(&e))?;
        let Some(resource) = current.and_then(|c| c.resource) else {
            return Err(Refusal::new(
                500,
                "exception",
                format!("{}: written but not readable", w.target),
            ));
        };
        let mut r = FhirResponse::json(status_of(outcome.action), &resource);
        r.headers.append(&mut headers);
        Ok(r)
    }

    async fn transaction(
        &self,
        req: &FhirRequest,
        grant: &AccessGrant,
        parts: WriteParts<'_>,
    ) -> Result<FhirResponse, Refusal> {
        let bundle = parse_body(parts.body, "the Bundle")?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(Refusal::bad_request(
                "POST at the base takes a Bundle (resourceType Bundle)",
            ));
        }
        match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => {}
            other => {
                return Err(Refusal::bad_request(format!(
                    "Bundle type {other:?} is not supported here: use \"transaction\""
                )));
            }
        }
        let entries = match bundle.get("entry") {
            None => &Vec::new(),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(Refusal::bad_request("Bundle.entry is not a list")),
        };
        let mut writes = Vec::with_capacity(entries.len());
        for (n, e) in entries.iter().enumerate() {
            let label = format!("entry {n}");
            let text = |p: &str| e.pointer(p).and_then(Value::as_str);
            let url = text("/request/url")
                .ok_or_else(|| Refusal::bad_request(format!("{label}: request.url is missing")))?;
            let url = url
                .strip_prefix(&format!("{}/", req.base_url))
                .unwrap_or(url);
            let Some((t, id)) = url.split_once('/').filter(|(_, id)| !id.contains('/')) else {
                return Err(Refusal::bad_request(format!(
                    "{label}: request.url {url:?} is not Type/id"
                )));
            };
            let label = format!("entry {n} ({t}/{id})");
            let resource = match text("/request/method") {
                Some("PUT") => Some(e.get("resource").cloned().ok_or_else(|| {
                    Refusal::bad_request(format!("{label}: a PUT without resource"))
                })?),
                Some("DELETE") => None,
                other => {
                    return Err(Refusal::bad_request(format!(
                        "{label}: request.method {other:?} is not supported (PUT or DELETE)"
                    )));
                }
            };
            let w = instance_write(t, id, resource, &label)?;
            writes.push(Write {
                if_match: text("/request/ifMatch").map(str::to_owned),
                if_none_match: text("/request/ifNoneMatch").map(str::to_owned),
                ..w
            });
        }
        let done = self.commit(grant, writes).await?;
        let entries: Vec<Value> = done
            .iter()
            .map(|(w, o)| {
                let mut response = json!({
                    "status": match (&w.op, o.action) {
                        (ResourceOp::Delete, _) => "204 No Content",
                        (_, PublishAction::Created) => "201 Created",
                        _ => "200 OK",
                    },
                });
                if let (Some(v), Some(t)) = (&o.version_id, o.last_updated) {
                    response["etag"] = Value::String(etag(v));
                    response["lastModified"] = Value::String(format_time(t));
                    response["location"] = Value::String(format!("{}/_history/{v}", w.target));
                }
                json!({"response": response})
            })
            .collect();
        Ok(FhirResponse::json(
            200,
            &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}),
        ))
    }
}

fn status_of(action: PublishAction) -> u16 {
    if action == PublishAction::Created {
        201
    } else {
        200
    }
}

fn version_headers(
    req: &FhirRequest,
    target: &ResourceRef,
    outcome: &PublishOutcome,
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if let (Some(v), Some(t)) = (&outcome.version_id, outcome.last_updated) {
        headers.push(("etag".to_owned(), etag(v)));
        headers.push(("last-modified".to_owned(), http_date(t)));
        headers.push((
            "location".to_owned(),
            format!("{}/{target}/_history/{v}", req.base_url),
        ));
    }
    headers
}

/// A JSON body, or a 400 that does not echo it.
fn parse_body(body: Option<&str>, what: &str) -> Result<Value, Refusal> {
    let text = body
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| Refusal::bad_request(format!("{what}: the request has no body")))?;
    serde_json::from_str(text).map_err(|e| {
        Refusal::bad_request(format!(
            "{what}: the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// A write of `t/id`: names checked, and a PUT's resource matching them.
fn instance_write(
    t: &str,
    id: &str,
    resource: Option<Value>,
    label: &str,
) -> Result<Write, Refusal> {
    if !super::is_type_name(t) {
        return Err(Refusal::bad_request(format!(
            "{label}: {t:?} is not a resource type"
        )));
    }
    if !is_fhir_id(id) {
        return Err(Refusal::bad_request(format!(
            "{label}: {id:?} is not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters)"
        )));
    }
    let op = match resource {
        None => ResourceOp::Delete,
        Some(resource) => {
            if resource.get("resourceType").and_then(Value::as_str) != Some(t) {
                return Err(Refusal::bad_request(format!(
                    "{label}: the resource's resourceType is not {t}"
                )));
            }
            match resource.get("id") {
                None => {}
                Some(Value::String(s)) if s == id => {}
                Some(_) => {
                    return Err(Refusal::bad_request(format!(
                        "{label}: the resource's id differs from the URL's"
                    )));
                }
            }
            ResourceOp::Upsert { resource }
        }
    };
    Ok(Write {
        target: target(t, id),
        op,
        if_match: None,
        if_none_match: None,
        label: label.to_owned(),
    })
}

/// The version an ETag names: `W/"3"`, `"3"`.
fn etag_version(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"')
}

/// `If-Match` must name the current version (a delete's too); `If-None-Match: *` needs the
/// resource absent or deleted.
fn check_preconditions(w: &Write, current: Option<&StoredVersion>) -> Result<(), Refusal> {
    if let Some(tag) = &w.if_match {
        let wanted = etag_version(tag);
        match current {
            Some(c) if c.version_id == wanted => {}
            Some(c) => {
                return Err(Refusal::new(
                    412,
                    "conflict",
                    format!(
                        "{}: If-Match names version {wanted:?}, the current version is {}",
                        w.label, c.version_id
                    ),
                ));
            }
            None => {
                return Err(Refusal::new(
                    412,
                    "conflict",
                    format!(
                        "{}: If-Match names version {wanted:?}, the resource does not exist",
                        w.label
                    ),
                ));
            }
        }
    }
    if let Some(tag) = &w.if_none_match {
        if tag.trim() != "*" {
            return Err(Refusal::bad_request(format!(
                "{}: If-None-Match on a write takes only \"*\"",
                w.label
            )));
        }
        if let Some(c) = current.filter(|c| !c.deleted) {
            return Err(Refusal::new(
                412,
                "conflict",
                format!(
                    "{}: If-None-Match: * but version {} exists",
                    w.label, c.version_id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
