//! The authorizer result cache of `fhir-unify serve`, as API Gateway keeps one in front of a
//! REQUEST authorizer: the answer (allow with its context, or deny) is remembered per identity
//! source — here the `Authorization` header, with the route key, as API Gateway combines the
//! configured identity sources — for a TTL (`authorizerResultTtlInSeconds`: default 300 s,
//! at most 3600 s, 0 disables caching).
//!
//! Where this cache is stricter than API Gateway's:
//! - an allow is never kept past the token's `exp` (API Gateway would serve it for the whole
//!   TTL): entry expiry = min(now + TTL, `exp`);
//! - denies are cached for the TTL, as API Gateway does, except those that can turn into an
//!   allow without the token changing ([`Cacheable::of`]): a token not yet valid (`nbf`), a
//!   partner's JWKS that could not be fetched, or a `kid` the JWKS does not have yet;
//! - the cache is bounded ([`DEFAULT_CAPACITY`] entries): when full, expired entries go
//!   first, then arbitrary ones (a flood of distinct tokens costs verifications, never
//!   memory).
//!
//! A request without the identity source (no `Authorization` header) is never cached: API
//! Gateway refuses it with 401 without calling the authorizer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::auth::{AccessGrant, Denial};

/// API Gateway's default authorizer result TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// API Gateway's largest authorizer result TTL.
pub const MAX_TTL_SECS: u64 = 3600;

/// The most answers the cache keeps.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How long an authorizer answer may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheable {
    /// An allow: up to the token's `exp` (seconds since the epoch), and the TTL.
    UntilExp(i64),
    /// A deny that stays a deny for this token: the TTL.
    Ttl,
    /// Not at all.
    Never,
}

impl Cacheable {
    /// How long an authorizer decision may be cached (see the module comment).
    pub fn of(decision: &Result<(AccessGrant, i64), Denial>) -> Cacheable {
        match decision {
            Ok((_, exp)) => Cacheable::UntilExp(*exp),
            Err(
                Denial::NoToken
                | Denial::NotYetValid(_)
                | Denial::KeysUnavailable(_)
                | Denial::UnknownKey { .. },
            ) => Cacheable::Never,
            Err(_) => Cacheable::Ttl,
        }
    }
}

/// An authorizer answer as the server uses it: allowed or not, and the context API Gateway
/// passes on (`requestContext.authorizer.lambda`) with the grant read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    pub is_authorized: bool,
    pub context: HashMap<String, Value>,
    pub grant: Option<AccessGrant>,
}

#[derive(Debug)]
struct Entry {
    until: Instant,
    answer: Arc<CachedAnswer>,
}

/// Hits and misses since the cache was made (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// Authorizer answers by identity source (see the module comment).
#[derive(Debug)]
pub struct AuthorizerCache {
    ttl: Duration,
    capacity: usize,
    entries: RwLock<HashMap<String, Entry>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl AuthorizerCache {
    /// A cache keeping answers for `ttl` (zero: no caching) and at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> AuthorizerCache {
        AuthorizerCache {
            ttl,
            capacity,
            entries: RwLock::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The TTL answers are kept for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Answers kept now (expired ones included until they are replaced or purged).
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The answer for `identity` on `route`: the cached one while it is valid, else `verify`'s
    /// (cached as [`Cacheable`] says). `identity` `None` (no `Authorization` header) always
    /// calls `verify` and caches nothing.
    pub fn answer(
        &self,
        route: &str,
        identity: Option<&str>,
        verify: impl FnOnce() -> (CachedAnswer, Cacheable),
    ) -> Arc<CachedAnswer> {
        self.answer_at(route, identity, Instant::now(), unix_now(), verify)
    }

    /// [`Self::answer`] at a given time (`now` and the same instant in seconds since the epoch).
    pub fn answer_at(
        &self,
        route: &str,
        identity: Option<&str>,
        now: Instant,
        now_unix: i64,
        verify: impl FnOnce() -> (CachedAnswer, Cacheable),
    ) -> Arc<CachedAnswer> {
        let Some(identity) = identity.filter(|_| !self.ttl.is_zero()) else {
            return Arc::new(verify().0);
        };
        let key = cache_key(route, identity);
        if let Ok(entries) = self.entries.read()
            && let Some(entry) = entries.get(&key)
            && now < entry.until
        {
            let answer = entry.answer.clone();
            drop(entries);
            self.count(true);
            return answer;
        }
        self.count(false);
        let (answer, cacheable) = verify();
        let answer = Arc::new(answer);
        let lifetime = match cacheable {
            Cacheable::Never => None,
            Cacheable::Ttl => Some(self.ttl),
            Cacheable::UntilExp(exp) => {
                let left = exp.saturating_sub(now_unix);
                u64::try_from(left)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| self.ttl.min(Duration::from_secs(s)))
            }
        };
        if let Some(lifetime) = lifetime
            && let Ok(mut entries) = self.entries.write()
        {
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                entries.retain(|_, e| now < e.until);
                // Still full of live answers: drop arbitrary ones (HashMap order).
                let excess = (entries.len() + 1).saturating_sub(self.capacity);
                let victims: Vec<String> = entries.keys().take(excess).cloned().collect();
                for v in victims {
                    entries.remove(&v);
                }
            }
            if self.capacity > 0 {
                entries.insert(
                    key,
                    Entry {
                        until: now + lifetime,
                        answer: answer.clone(),
                    },
                );
            }
        }
        answer
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn cache_key(route: &str, identity: &str) -> String {
    // The route key has no newline (it comes from the router); the header value cannot hold
    // one either (HTTP forbids it), so the pair is unambiguous.
    let mut key = String::with_capacity(route.len() + 1 + identity.len());
    key.push_str(route);
    key.push('\n');
    key.push_str(identity);
    key
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn allow(partner: &str) -> CachedAnswer {
        let grant = AccessGrant {
            partner: partner.into(),
            read: ["Patient".to_owned()].into(),
            search: Default::default(),
            write: Default::default(),
        };
        CachedAnswer {
            is_authorized: true,
            context: grant.to_context().into_iter().collect(),
            grant: Some(grant),
        }
    }

    fn deny() -> CachedAnswer {
        CachedAnswer {
            is_authorized: false,
            context: HashMap::new(),
            grant: None,
        }
    }

    const T0: i64 = 1_900_000_000;

    #[test]
    fn an_allow_is_cached_until_the_ttl() {
        let cache = AuthorizerCache::new(Duration::from_secs(300), 10);
        let calls = Cell::new(0);
        let now = Instant::now();
        let verify = || {
            calls.set(calls.get() + 1);
            (allow("acme"), Cacheable::UntilExp(T0 + 3600))
        };
        let a = cache.answer_at("$default", Some("Bearer x"), now, T0, verify);
        let b = cache.answer_at("$default", Some("Bearer x"), now, T0, verify);
        assert!(a.is_authorized && b.is_authorized);
        assert_eq!(b.grant.as_ref().unwrap().partner, "acme");
        assert_eq!(calls.get(), 1, "the second answer comes from the cache");
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });
        // 299 s later: still cached; at 300 s: verified again.
        let later = now + Duration::from_secs(299);
        cache.answer_at("$default", Some("Bearer x"), later, T0 + 299, verify);
        assert_eq!(calls.get(), 1);
        let expired = now + Duration::from_secs(300);
        cache.answer_at("$default", Some("Bearer x"), expired, T0 + 300, verify);
        assert_eq!(calls.get(), 2);
        // Another token, or the same one on another route, is another entry.
        cache.answer_at("$default", Some("Bearer y"), now, T0, verify);
        cache.answer_at("GET /x", Some("Bearer x"), now, T0, verify);
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn an_allow_is_never_kept_past_the_token_exp() {
        let cache = AuthorizerCache::new(Duration::from_secs(300), 10);
        let now = Instant::now();
        let first = cache.answer_at("$default", Some("Bearer x"), now, T0, || {
            (allow("acme"), Cacheable::UntilExp(T0 + 10))
        });
        assert!(first.is_authorized);
        // Within exp: cached.
        let within = cache.answer_at(
            "$default",
            Some("Bearer x"),
            now + Duration::from_secs(9),
            T0 + 9,
            || panic!("must come from the cache"),
        );
        assert!(within.is_authorized);
        // At exp, long before the TTL: the authorizer decides again (and denies).
        let after = cache.answer_at(
            "$default",
            Some("Bearer x"),
            now + Duration::from_secs(10),
            T0 + 10,
            || (deny(), Cacheable::Ttl),
        );
        assert!(!after.is_authorized);
        // A token already past its exp is not cached at all.
        let cache = AuthorizerCache::new(Duration::from_secs(300), 10);
        cache.answer_at("$default", Some("Bearer z"), now, T0, || {
            (allow("acme"), Cacheable::UntilExp(T0 - 1))
        });
        assert!(cache.is_empty());
    }

    #[test]
    fn ttl_zero_disables_the_cache() {
        let cache = AuthorizerCache::new(Duration::ZERO, 10);
        let calls = Cell::new(0);
        for _ in 0..3 {
            let a = cache.answer("$default", Some("Bearer x"), || {
                calls.set(calls.get() + 1);
                (allow("acme"), Cacheable::UntilExp(i64::MAX))
            });
            assert!(a.is_authorized);
        }
        assert_eq!(calls.get(), 3);
        assert!(cache.is_empty());
        assert_eq!(cache.stats(), CacheStats::default());
    }

    #[test]
    fn denies_are_cached_for_the_ttl_unless_they_can_heal() {
        let cache = AuthorizerCache::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let calls = Cell::new(0);
        let bad = || {
            calls.set(calls.get() + 1);
            (deny(), Cacheable::Ttl)
        };
        assert!(
            !cache
                .answer_at("$default", Some("Bearer bad"), now, T0, bad)
                .is_authorized
        );
        assert!(
            !cache
                .answer_at("$default", Some("Bearer bad"), now, T0, bad)
                .is_authorized
        );
        assert_eq!(calls.get(), 1, "a bad signature stays bad: cached");
        let at_ttl = now + Duration::from_secs(60);
        cache.answer_at("$default", Some("Bearer bad"), at_ttl, T0 + 60, bad);
        assert_eq!(calls.get(), 2, "not longer than the TTL");
        // Not cached: no identity source, and denies that may become allows.
        let calls = Cell::new(0);
        for identity in [None, Some("Bearer early")] {
            for _ in 0..2 {
                let a = cache.answer_at("$default", identity, now, T0, || {
                    calls.set(calls.get() + 1);
                    (deny(), Cacheable::Never)
                });
                assert!(!a.is_authorized);
            }
        }
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn which_decisions_are_cacheable() {
        let grant = allow("acme").grant.unwrap();
        assert_eq!(Cacheable::of(&Ok((grant, T0))), Cacheable::UntilExp(T0));
        let p = || "acme".to_owned();
        for d in [
            Denial::NoToken,
            Denial::NotYetValid(p()),
            Denial::KeysUnavailable(p()),
            Denial::UnknownKey {
                partner: p(),
                kid: "k".into(),
            },
        ] {
            assert_eq!(Cacheable::of(&Err(d.clone())), Cacheable::Never, "{d}");
        }
        for d in [
            Denial::Malformed("x".into()),
            Denial::Algorithm("HS256".into()),
            Denial::UnknownIssuer,
            Denial::BadSignature(p()),
            Denial::Expired(p()),
            Denial::WrongAudience(p()),
            Denial::WrongIssuer(p()),
            Denial::NoScope(p()),
        ] {
            assert_eq!(Cacheable::of(&Err(d.clone())), Cacheable::Ttl, "{d}");
        }
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = AuthorizerCache::new(Duration::from_secs(300), 3);
        let now = Instant::now();
        for i in 0..10 {
            let token = format!("Bearer t{i}");
            cache.answer_at("$default", Some(&token), now, T0, || {
                (allow("acme"), Cacheable::UntilExp(T0 + 3600))
            });
            assert!(cache.len() <= 3);
        }
        // Expired entries are purged before live ones.
        let cache = AuthorizerCache::new(Duration::from_secs(300), 2);
        cache.answer_at("$default", Some("Bearer short"), now, T0, || {
            (allow("acme"), Cacheable::UntilExp(T0 + 5))
        });
        cache.answer_at("$default", Some("Bearer long"), now, T0, || {
            (allow("acme"), Cacheable::UntilExp(T0 + 3600))
        });
        let later = now + Duration::from_secs(10);
        cache.answer_at("$default", Some("Bearer new"), later, T0 + 10, || {
            (allow("acme"), Cacheable::UntilExp(T0 + 3600))
        });
        let kept = cache.answer_at("$default", Some("Bearer long"), later, T0 + 10, || {
            panic!("the live entry must have been kept")
        });
        assert!(kept.is_authorized);
        // Capacity 0 keeps nothing.
        let cache = AuthorizerCache::new(Duration::from_secs(300), 0);
        cache.answer_at("$default", Some("Bearer x"), now, T0, || {
            (allow("acme"), Cacheable::UntilExp(T0 + 3600))
        });
        assert!(cache.is_empty());
    }
}
