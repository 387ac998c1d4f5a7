//! Search and history forwarded to the FHIR server: how the partner gateway answers over a
//! `rest` store ([`crate::gateway::Gateway::rest`]). The server searches; this side sends the
//! parameters the gateway accepted, reads the Bundle back into [`StoredVersion`]s (our lineage
//! taken off, as `read` does), and keeps the server's `next` link as an opaque cursor (its path
//! and query below the base), which the gateway wraps into a link to itself. Every resource is
//! checked again by the gateway against the partner's grant (deny by default).
//!
//! A cursor comes back from the partner, so before it is followed it must be a page of the
//! same search: its path is the searched type (or the base itself, where HAPI puts its
//! `_getpages` links), and it names no parameter that reaches other resources (`_include`,
//! `_revinclude`, `_has`, `_contained`…). The store's own state resources (`Basic/fu-state-…`)
//! are bookkeeping: never returned.

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::Value;

use super::{RestStore, STATE_ID_PREFIX, STATE_TYPE, entry_version, parse_any_time};
use crate::model::ResourceRef;
use crate::store::{StoreError, StoredVersion, is_fhir_id};

/// Parameters a followed cursor may not carry: they return resources of other types or
/// search across them.
const REFUSED_PARAMS: &[&str] = &["_include", "_revinclude", "_has", "_contained", "_type"];

/// One page of a forwarded search or history.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardedPage {
    /// `Bundle.total`, when the server says it.
    pub total: Option<u64>,
    /// The page's resources of the searched type (history: versions, deletes included).
    pub versions: Vec<StoredVersion>,
    /// Entries that are not a readable resource of the searched type: left out, counted.
    pub withheld: usize,
    /// The next page: the server's link below its base (the cursor), if any.
    pub next: Option<String>,
}

/// The `Type/id` of a history entry without a resource (a delete): from `request.url`
/// (`Type/id`), else from `fullUrl` (`…/Type/id` or `…/Type/id/_history/v`).
fn delete_target(entry: &Value) -> Option<(String, String)> {
    if let Some((t, rest)) = entry
        .pointer("/request/url")
        .and_then(Value::as_str)
        .and_then(|u| u.split_once('/'))
    {
        return Some((t.to_owned(), rest.split('/').next()?.to_owned()));
    }
    let full = entry.get("fullUrl").and_then(Value::as_str)?;
    let full = full.split("/_history/").next()?;
    let mut parts = full.rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    Some((t.to_owned(), id.to_owned()))
}

/// Why a cursor is not followed.
fn bad_cursor(reason: &str) -> StoreError {
    StoreError::Invalid {
        target: "_cursor".into(),
        reason: reason.into(),
    }
}

/// Checks that `cursor` (a path and query below the base) is a page of a search of
/// `resource_type` (`history_of`: of that history path) and names no refused parameter.
pub fn check_cursor(cursor: &str, paths: &[&str]) -> Result<(), StoreError> {
    if cursor.contains("://") || cursor.contains('#') || cursor.starts_with('/') {
        return Err(bad_cursor("not a page of this server's search"));
    }
    let (path, query) = cursor.split_once('?').unwrap_or((cursor, ""));
    if !paths.contains(&path) {
        return Err(bad_cursor("not a page of this search"));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = percent_decode_str(raw).decode_utf8_lossy();
        let base = name.split(':').next().unwrap_or_default();
        if REFUSED_PARAMS.contains(&base) {
            return Err(bad_cursor("a page may not include other resources"));
        }
    }
    Ok(())
}

fn encode(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl RestStore {
    /// A type-level search on the server: `GET Type?params&_count=count`, or the page `cursor`
    /// (a `next` of an earlier page). `params` are the search parameters the gateway accepted.
    pub async fn forward_search(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        count: usize,
        cursor: Option<&str>,
    ) -> Result<ForwardedPage, StoreError> {
        let url = match cursor {
            Some(c) => {
                check_cursor(c, &[resource_type, ""])?;
                self.url(c)
            }
            None => {
                let mut query = encode(params);
                if !query.is_empty() {
                    query.push('&');
                }
                self.url(&format!("{resource_type}?{query}_count={count}"))
            }
        };
        let body = self.get_bundle(&url, resource_type).await?;
        let mut page = ForwardedPage {
            total: body.get("total").and_then(Value::as_u64),
            versions: Vec::new(),
            withheld: 0,
            next: self.next_cursor(&body, &[resource_type, ""])?,
        };
        for entry in body
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if entry.pointer("/search/mode").and_then(Value::as_str) == Some("outcome") {
                // The server's own notes on the search (e.g. HAPI's warnings): not resources.
                continue;
            }
            let Some(resource) = entry.get("resource") else {
                page.withheld += 1;
                continue;
            };
            let kind = resource.get("resourceType").and_then(Value::as_str);
            let id = resource.get("id").and_then(Value::as_str);
            match (kind, id) {
                (Some(STATE_TYPE), Some(id)) if id.starts_with(STATE_ID_PREFIX) => {}
                (Some(t), Some(id)) if t == resource_type && is_fhir_id(id) => {
                    let target = ResourceRef {
                        resource_type: t.to_owned(),
                        id: id.to_owned(),
                    };
                    match self.version_of(&target, resource) {
                        Ok(v) => page.versions.push(v),
                        Err(e) => {
                            tracing::warn!(target = %target, "search entry withheld: {e}");
                            page.withheld += 1;
                        }
                    }
                }
                _ => page.withheld += 1,
            }
        }
        Ok(page)
    }

    /// A history on the server (`Type/_history` or `Type/id/_history`), newest first,
    /// deletes included (without their lineage), paged as [`Self::forward_search`].
    pub async fn forward_history(
        &self,
        resource_type: &str,
        id: Option<&str>,
        since: Option<chrono::DateTime<chrono::Utc>>,
        count: usize,
        cursor: Option<&str>,
    ) -> Result<ForwardedPage, StoreError> {
        let path = match id {
            Some(id) => format!("{resource_type}/{id}/_history"),
            None => format!("{resource_type}/_history"),
        };
        let url = match cursor {
            Some(c) => {
                check_cursor(c, &[path.as_str(), ""])?;
                self.url(c)
            }
            None => {
                let mut params = Vec::new();
                if let Some(since) = since {
                    params.push(("_since".to_owned(), crate::store::format_time(since)));
                }
                params.push(("_count".to_owned(), count.to_string()));
                self.url(&format!("{path}?{}", encode(&params)))
            }
        };
        let body = self.get_bundle(&url, &path).await?;
        let mut page = ForwardedPage {
            total: body.get("total").and_then(Value::as_u64),
            versions: Vec::new(),
            withheld: 0,
            next: self.next_cursor(&body, &[path.as_str(), ""])?,
        };
        for entry in body
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match entry.get("resource") {
                Some(resource) => {
                    let kind = resource.get("resourceType").and_then(Value::as_str);
                    let rid = resource.get("id").and_then(Value::as_str);
                    match (kind, rid) {
                        (Some(t), Some(rid)) if t == resource_type && is_fhir_id(rid) => {
                            let target = ResourceRef {
                                resource_type: t.to_owned(),
                                id: rid.to_owned(),
                            };
                            match self.version_of(&target, resource) {
                                Ok(v) => page.versions.push(v),
                                Err(_) => page.withheld += 1,
                            }
                        }
                        _ => page.withheld += 1,
                    }
                }
                None => {
                    // A delete: its target from the request URL (`Type/id`), else fullUrl.
                    let target = delete_target(entry);
                    let version = entry_version(entry);
                    let modified = entry
                        .pointer("/response/lastModified")
                        .and_then(Value::as_str)
                        .and_then(parse_any_time);
                    match (target, version, modified) {
                        (Some((t, i)), Some(version_id), Some(last_updated))
                            if t == resource_type && is_fhir_id(&i) =>
                        {
                            page.versions.push(StoredVersion {
                                target: ResourceRef {
                                    resource_type: t,
                                    id: i,
                                },
                                version_id,
                                last_updated,
                                deleted: true,
                                resource: None,
                                lineage: None,
                            });
                        }
                        _ => page.withheld += 1,
                    }
                }
            }
        }
        Ok(page)
    }

    async fn get_bundle(&self, url: &str, what: &str) -> Result<Value, StoreError> {
        let answer = self.call("GET", url, &[], None, what).await?;
        if answer.status != 200 {
            return Err(self.refused(&answer, "GET", url, what));
        }
        let body = self.json_body(&answer, "GET", url, what)?;
        if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(StoreError::Unavailable(format!(
                "{what}: GET {url} answered something other than a Bundle"
            )));
        }
        Ok(body)
    }

    /// The Bundle's `next` link as a cursor below the base; a link elsewhere is an error.
    fn next_cursor(&self, body: &Value, paths: &[&str]) -> Result<Option<String>, StoreError> {
        let next = body
            .get("link")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            .and_then(|l| l.get("url"))
            .and_then(Value::as_str);
        let Some(next) = next else {
            return Ok(None);
        };
        let prefix = format!("{}/", self.base);
        let below = next
            .strip_prefix(&prefix)
            .or_else(|| next.strip_prefix(&self.base).filter(|r| r.starts_with('?')))
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "the server's next link {next:?} is not under the base URL {}",
                    self.base
                ))
            })?;
        check_cursor(below, paths).map_err(|e| {
            StoreError::Unavailable(format!("the server's next link {next:?}: {e}"))
        })?;
        Ok(Some(below.to_owned()))
    }
}

#[async_trait::async_trait]
impl crate::store::search::SearchStore for RestStore {
    /// The gateway forwards a search's own parameters ([`RestStore::forward_search`]); a
    /// parsed [`crate::store::search::SearchQuery`] cannot be sent to a server as written.
    async fn search(
        &self,
        _query: &crate::store::search::SearchQuery,
    ) -> Result<crate::store::search::SearchPage, StoreError> {
        Err(StoreError::Unavailable(
            "a FHIR server is searched through the gateway's forwarding".into(),
        ))
    }

    async fn history_page(
        &self,
        query: &crate::store::search::HistoryQuery,
    ) -> Result<crate::store::search::HistoryPage, StoreError> {
        let page = self
            .forward_history(
                &query.resource_type,
                query.id.as_deref(),
                query.since,
                query.count,
                query.cursor.as_deref(),
            )
            .await?;
        Ok(crate::store::search::HistoryPage {
            total: page.total.unwrap_or(page.versions.len() as u64),
            versions: page.versions,
            next: page.next,
        })
    }
}
