use super::*;
use crate::scripted_http::ScriptedHttp;
use serde_json::json;

fn quick(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
    }
}

fn envelope(id: &str) -> Value {
    json!({"version": "0", "id": id, "source": "fhir-unify", "detail": {"id": id}})
}

#[test]
fn backoff_doubles_and_is_capped() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(1000),
        timeout: Duration::from_secs(1),
    };
    let waits: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
    assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(p.backoff(64).as_millis(), 1000, "no overflow");
}

#[tokio::test]
async fn a_webhook_posts_each_event_as_json_with_its_key() {
    let server = ScriptedHttp::statuses(vec![]);
    let hook = WebhookTarget::new(
        &server.endpoint,
        vec![("authorization".into(), "Bearer t".into())],
        quick(1),
    );
    assert_eq!(hook.id(), format!("webhook:{}", server.endpoint));
    let (a, b) = (envelope("a"), envelope("b"));
    hook.deliver(&[&a, &b]).await.unwrap();
    assert_eq!(server.accepted_bodies(), vec![a, b]);
    let first = server.requests()[0].clone();
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("idempotency-key"), Some("a"));
    assert_eq!(first.header("authorization"), Some("Bearer t"));
}

#[tokio::test]
async fn a_webhook_retries_5xx_and_429_then_delivers() {
    let server = ScriptedHttp::statuses(vec![503, 429, 500]);
    let hook = WebhookTarget::new(&server.endpoint, vec![], quick(4));
    let a = envelope("a");
    hook.deliver(&[&a]).await.unwrap();
    assert_eq!(
        server.accepted_bodies(),
        vec![a],
        "delivered once, on the fourth attempt"
    );
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_reports_how_far_it_got() {
    let server = ScriptedHttp::statuses(vec![200, 503, 503]);
    let hook = WebhookTarget::new(&server.endpoint, vec![], quick(2));
    let (a, b, c) = (envelope("a"), envelope("b"), envelope("c"));
    let failure = hook.deliver(&[&a, &b, &c]).await.unwrap_err();
    assert_eq!(failure.delivered, 1);
    assert!(
        failure.error.message.contains("2 attempts"),
        "{}",
        failure.error
    );
    assert!(failure.error.message.contains("503"), "{}", failure.error);
    assert_eq!(
        server.accepted_bodies(),
        vec![a],
        "c was not attempted after b failed"
    );
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let server = ScriptedHttp::statuses(vec![400]);
    let hook = WebhookTarget::new(&server.endpoint, vec![], quick(5));
    let a = envelope("a");
    let failure = hook.deliver(&[&a]).await.unwrap_err();
    assert_eq!(failure.delivered, 0);
    assert!(
        failure.error.message.contains("refused"),
        "{}",
        failure.error
    );
    // The next request would be answered 200: had it retried, the event would be there.
    assert!(server.accepted_bodies().is_empty());
}

#[tokio::test]
async fn an_unreachable_webhook_fails_after_its_attempts() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hook = WebhookTarget::new(&format!("http://127.0.0.1:{port}/x"), vec![], quick(2));
    let a = envelope("a");
    let failure = hook.deliver(&[&a]).await.unwrap_err();
    assert_eq!(failure.delivered, 0);
}

#[tokio::test]
async fn sse_publishes_to_subscribers_and_does_not_fail_without_any() {
    let (tx, _) = broadcast::channel(8);
    let target = SseTarget::new("patients", tx.clone());
    assert_eq!(target.id(), "sse:patients");
    let a = envelope("a");
    target.deliver(&[&a]).await.unwrap();
    let mut rx = tx.subscribe();
    let b = envelope("b");
    target.deliver(&[&b]).await.unwrap();
    let m = rx.recv().await.unwrap();
    assert_eq!(m.id, "b");
    assert_eq!(serde_json::from_str::<Value>(&m.data).unwrap(), b);
}

#[tokio::test]
async fn an_ndjson_target_writes_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.ndjson");
    let target = NdjsonTarget::new("t.ndjson", NdjsonWriter::open(&path).unwrap());
    assert_eq!(target.id(), "ndjson:t.ndjson");
    let a = envelope("a");
    let mut replayed = envelope("a");
    replayed["replay-name"] = json!("r1");
    target.deliver(&[&a, &a]).await.unwrap();
    target.deliver(&[&a, &replayed]).await.unwrap();
    let lines = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        lines.lines().count(),
        2,
        "a once, and its replay once: {lines}"
    );
}
