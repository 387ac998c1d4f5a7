//! The bad cases of the REST store against a scripted HTTP server (the good cases run in
//! `tests/store_suite.rs` against `fhir-unify serve`), the Bundle planning, and SigV4 against
//! the AWS test-suite vector.

use std::time::Instant;

use super::*;
use crate::model::RecordKey;

use crate::scripted_http::{Received as Seen, Reply, ScriptedHttp};

/// The scripted server as a FHIR server: base `/fhir`, answers `application/fhir+json`
/// unless the handler says otherwise.
struct Scripted {
    base: String,
    http: ScriptedHttp,
}

impl Scripted {
    fn seen(&self) -> Vec<Seen> {
        self.http.requests()
    }
}

fn scripted(handler: impl Fn(usize, &Seen) -> Reply + Send + 'static) -> Scripted {
    let http = ScriptedHttp::serve(move |n, request| {
        let (status, mut extra, text) = handler(n, request);
        if !extra.iter().any(|(k, _)| *k == "content-type") {
            extra.push(("content-type", "application/fhir+json".to_owned()));
        }
        (status, extra, text)
    });
    Scripted {
        base: format!("{}/fhir", http.endpoint),
        http,
    }
}

fn options() -> RestOptions {
    RestOptions {
        max_attempts: 3,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        timeout: Duration::from_secs(10),
        ..RestOptions::default()
    }
}

fn store(server: &Scripted, auth: RestAuth) -> RestStore {
    RestStore::new(&server.base, auth, options()).unwrap()
}

fn patient_ref(id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: id.into(),
    }
}

fn patient_json(id: &str, version: &str) -> String {
    json!({"resourceType": "Patient", "id": id,
        "meta": {"versionId": version, "lastUpdated": "2025-01-02T03:04:05.678Z"}})
    .to_string()
}

fn outcome(code: &str, diagnostics: &str) -> String {
    json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": code, "diagnostics": diagnostics,
        "expression": ["Patient.gender"]}]})
    .to_string()
}

fn change(target: ResourceRef, resource: Option<Value>) -> ResourceChange {
    ResourceChange {
        target,
        op: match resource {
            Some(resource) => ResourceOp::Upsert { resource },
            None => ResourceOp::Delete,
        },
        lineage: Lineage {
            source: "app".into(),
            entity: "e".into(),
            key: RecordKey::from_pairs([("k", json!(1))]),
            sequence: Sequence::from(1),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        },
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    let server = scripted(|n, _| match n {
        0 => (
            429,
            vec![("retry-after", "1".into())],
            outcome("throttled", "slow down"),
        ),
        _ => (200, vec![], patient_json("p1", "3")),
    });
    let start = Instant::now();
    let read = store(&server, RestAuth::None)
        .read(&patient_ref("p1"))
        .await
        .unwrap()
        .unwrap();
    // The configured backoff is at most 5 ms: only the Retry-After explains a second's wait.
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(read.version_id, "3");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.method == "GET" && s.path == "/fhir/Patient/p1")
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_and_its_cap() {
    let answer = |v: &str| Answer {
        status: 429,
        headers: vec![("retry-after".into(), v.into())],
        body: Vec::new(),
    };
    assert_eq!(retry_after(&answer("7")), Some(Duration::from_secs(7)));
    assert_eq!(retry_after(&answer("99999")), Some(MAX_RETRY_AFTER));
    // A date in the past: retry now.
    assert_eq!(
        retry_after(&answer("Wed, 21 Oct 2015 07:28:00 GMT")),
        Some(Duration::ZERO)
    );
    let later = (Utc::now() + chrono::Duration::seconds(30))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let wait = retry_after(&answer(&later)).unwrap();
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(retry_after(&answer("soon")), None);
}

#[tokio::test]
async fn a_500_repeated_until_the_retry_limit_is_a_retryable_error() {
    let server = scripted(|_, _| (500, vec![], outcome("exception", "database down")));
    let err = store(&server, RestAuth::None)
        .read(&patient_ref("p1"))
        .await
        .unwrap_err();
    let StoreError::Unavailable(text) = &err else {
        panic!("{err}");
    };
    assert!(err.is_retryable());
    assert!(text.contains("Patient/p1"), "{text}");
    assert!(text.contains("answered 500"), "{text}");
    assert!(text.contains("database down"), "{text}");
    assert!(text.contains("3 attempts"), "{text}");
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn a_refused_transaction_surfaces_the_operation_outcome_naming_the_resource() {
    let server = scripted(|_, req| match req.method.as_str() {
        "GET" => (404, vec![], outcome("not-found", "unknown")),
        _ => (
            422,
            vec![],
            outcome("processing", "Patient/p2: Patient.gender: unknown code"),
        ),
    });
    let s = store(&server, RestAuth::None);
    let changes = [
        change(patient_ref("p1"), Some(json!({"resourceType": "Patient"}))),
        change(
            patient_ref("p2"),
            Some(json!({"resourceType": "Patient", "gender": "x"})),
        ),
    ];
    let err = s.apply(&changes).await.unwrap_err();
    let StoreError::Invalid { target, reason } = &err else {
        panic!("{err}");
    };
    assert_eq!(target, "Patient/p2");
    assert!(reason.contains("answered 422"), "{reason}");
    assert!(
        reason.contains("error processing: Patient/p2: Patient.gender: unknown code"),
        "{reason}"
    );
    assert!(reason.contains("(at Patient.gender)"), "{reason}");
    assert!(!err.is_retryable());
    // One transaction was sent, with both resources (each with its state resource).
    let seen = server.seen();
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1);
    let bundle: Value = posts[0].body.clone();
    assert_eq!(bundle["type"], "transaction");
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 4);
    assert_eq!(bundle["entry"][0]["request"]["ifNoneMatch"], "*");
    assert_eq!(posts[0].path, "/fhir");
}

#[tokio::test]
async fn a_bad_change_is_refused_before_anything_is_sent() {
    let server = scripted(|_, _| (500, vec![], String::new()));
    let err = store(&server, RestAuth::None)
        .apply(&[change(
            patient_ref("p1"),
            Some(json!({"resourceType": "Observation"})),
        )])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { target, .. } if target == "Patient/p1"),
        "{err}"
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_server_answering_non_json_is_a_typed_error() {
    let server = scripted(|_, _| {
        (
            200,
            vec![("content-type", "text/html".into())],
            "<html>login</html>".into(),
        )
    });
    let err = store(&server, RestAuth::None)
        .read(&patient_ref("p1"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Patient/p1"), "{text}");
    assert!(text.contains("not JSON"), "{text}");
    assert!(text.contains("text/html"), "{text}");
    // And as an error body: its status and that it is not JSON.
    let server = scripted(|_, _| {
        (
            400,
            vec![("content-type", "text/plain".into())],
            "bad".into(),
        )
    });
    let err = store(&server, RestAuth::None)
        .read(&patient_ref("p1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("answered 400 with a body that is not JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn unauthorized_is_retryable_and_the_bearer_token_is_sent() {
    let server = scripted(|_, _| (401, vec![], outcome("login", "token expired")));
    let err = store(&server, RestAuth::Bearer("t0k".into()))
        .read(&patient_ref("p1"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("token expired"), "{err}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "a 401 is not retried in the call");
    assert_eq!(seen[0].header("authorization"), Some("Bearer t0k"));
}

#[tokio::test]
async fn sigv4_requests_carry_a_signature() {
    let server = scripted(|_, _| (404, vec![], outcome("not-found", "no")));
    let credentials = aws_credential_types::Credentials::new(
        "AKID",
        "SECRET",
        Some("TOKEN".into()),
        None,
        "test",
    );
    let auth = RestAuth::SigV4 {
        region: "us-east-1".into(),
        service: "healthlake".into(),
        credentials: SharedCredentialsProvider::new(credentials),
    };
    assert!(
        store(&server, auth)
            .read(&patient_ref("p1"))
            .await
            .unwrap()
            .is_none()
    );
    let seen = server.seen();
    let a = seen[0].header("authorization").unwrap();
    assert!(
        a.starts_with("AWS4-HMAC-SHA256 Credential=AKID/")
            && a.contains("/us-east-1/healthlake/aws4_request"),
        "{a}"
    );
    assert!(
        a.contains("SignedHeaders=accept;host;x-amz-date;x-amz-security-token"),
        "{a}"
    );
    assert_eq!(seen[0].header("x-amz-security-token"), Some("TOKEN"));
    assert!(seen[0].header("x-amz-date").is_some());
}

/// The `get-vanilla` case of the AWS SigV4 test suite (shipped in the aws-sigv4 crate as
/// `aws-signing-test-suite/v4/get-vanilla`): the signature must be AWS's.
#[test]
fn sigv4_matches_the_aws_test_suite_vector() {
    let credentials = aws_credential_types::Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "test",
    );
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
    let headers = sigv4_headers(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        b"",
        &credentials,
        "us-east-1",
        "service",
        time,
    )
    .unwrap();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("x-amz-date"), Some("20150830T123600Z"));
    assert_eq!(
        get("authorization"),
        Some(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
    );
}

fn prepared_of(changes: &[ResourceChange]) -> Vec<Prepared<'_>> {
    changes.iter().map(|c| prepare(c).unwrap()).collect()
}

fn r(t: &str, id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: t.into(),
        id: id.into(),
    }
}

#[test]
fn bundles_keep_references_together_and_each_resource_once() {
    let obs = |id: &str, subject: &str| json!({"resourceType": "Observation", "id": id, "subject": {"reference": subject}});
    let changes = vec![
        change(r("Patient", "a"), Some(json!({"resourceType": "Patient"}))), // 0
        change(r("Patient", "b"), Some(json!({"resourceType": "Patient"}))), // 1
        change(r("Patient", "c"), Some(json!({"resourceType": "Patient"}))), // 2
        change(r("Observation", "o1"), Some(obs("o1", "Patient/a"))),        // 3
        // An absolute reference with a version counts too.
        change(
            r("Observation", "o2"),
            Some(obs("o2", "https://x.example/fhir/Patient/b/_history/2")),
        ), // 4
        change(
            r("Patient", "a"),
            Some(json!({"resourceType": "Patient", "active": true})),
        ), // 5
        // A reference outside the call ties nothing.
        change(r("Observation", "o3"), Some(obs("o3", "Patient/zzz"))), // 6
    ];
    let prepared = prepared_of(&changes);
    // Two changes (four entries) per Bundle.
    let bundles = plan_bundles(&prepared, 4);
    let where_is = |i: usize| bundles.iter().position(|b| b.contains(&i)).unwrap();
    assert_eq!(where_is(0), where_is(3), "{bundles:?}: a and o1 together");
    assert_eq!(where_is(1), where_is(4), "{bundles:?}: b and o2 together");
    assert!(
        where_is(5) > where_is(0),
        "{bundles:?}: a's second change after its first"
    );
    for b in &bundles {
        assert!(b.len() <= 2, "{bundles:?}");
        let targets: HashSet<&ResourceRef> = b.iter().map(|&i| &changes[i].target).collect();
        assert_eq!(
            targets.len(),
            b.len(),
            "{bundles:?}: a resource twice in one Bundle"
        );
    }
    let mut all: Vec<usize> = bundles.concat();
    all.sort_unstable();
    assert_eq!(all, (0..changes.len()).collect::<Vec<_>>());

    // One Bundle when everything fits, except the second change of `a`.
    let bundles = plan_bundles(&prepared, 100);
    assert_eq!(bundles, vec![vec![0, 1, 2, 3, 4, 6], vec![5]]);

    // A group larger than one Bundle is split, in order.
    let chain: Vec<ResourceChange> = (0..5)
        .map(|i| {
            change(
                r("Observation", &format!("c{i}")),
                Some(obs(
                    &format!("c{i}"),
                    &format!("Observation/c{}", (i + 1) % 5),
                )),
            )
        })
        .collect();
    let bundles = plan_bundles(&prepared_of(&chain), 4);
    assert_eq!(bundles, vec![vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn the_lineage_extension_comes_off_and_leaves_the_content_as_it_was() {
    let mut resource = json!({"resourceType": "Patient", "id": "p"});
    put_lineage(&mut resource, "{\"x\":1}");
    assert_eq!(resource["meta"]["extension"][0]["url"], EXT_LINEAGE);
    assert_eq!(take_lineage(&mut resource).as_deref(), Some("{\"x\":1}"));
    assert_eq!(resource, json!({"resourceType": "Patient", "id": "p"}));
    let mut profiled = json!({"resourceType": "Patient", "meta": {"profile": ["p"],
        "extension": [{"url": "other", "valueString": "k"}]}});
    let before = profiled.clone();
    put_lineage(&mut profiled, "L");
    assert_eq!(take_lineage(&mut profiled).as_deref(), Some("L"));
    assert_eq!(profiled, before);
    assert_eq!(take_lineage(&mut profiled), None);
}

#[test]
fn state_resources_round_trip_and_bad_ones_are_named() {
    let t = r("Patient", "p1");
    let mut doc = StateDoc::default();
    doc.marks.insert(
        ("app".into(), "patients".into()),
        Sequence::parse("1405400000000002063282833").unwrap(),
    );
    doc.marks
        .insert(("other".into(), "x".into()), Sequence::from(3));
    doc.deletes.insert("2".into(), "{}".into());
    let resource = state_resource(&t, &doc);
    assert_eq!(resource["subject"]["reference"], "Patient/p1");
    assert!(is_fhir_id(resource["id"].as_str().unwrap()));
    assert_eq!(parse_state(&t, &resource).unwrap(), doc);
    assert_ne!(state_id(&t), state_id(&r("Patient", "p2")));
    let bad = json!({"resourceType": "Basic", "extension": [{"url": EXT_MARK, "extension": [
        {"url": "source", "valueString": "app"}, {"url": "entity", "valueString": "e"},
        {"url": "sequence", "valueString": "-1"}]}]});
    let err = parse_state(&t, &bad).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("Patient/p1")),
        "{err}"
    );
}

#[test]
fn bad_base_urls_and_limits_are_refused() {
    for base in ["ftp://x", "x", "http://x/fhir?a=1"] {
        assert!(
            RestStore::new(base, RestAuth::None, RestOptions::default()).is_err(),
            "{base}"
        );
    }
    let one = RestOptions {
        max_entries: 1,
        ..RestOptions::default()
    };
    assert!(RestStore::new("http://x", RestAuth::None, one).is_err());
    let s = RestStore::new("https://x/fhir/", RestAuth::None, RestOptions::default()).unwrap();
    assert_eq!(s.base(), "https://x/fhir");
    // Debug output never shows a token.
    let b = RestStore::new(
        "https://x",
        RestAuth::Bearer("secret".into()),
        RestOptions::default(),
    )
    .unwrap();
    assert!(!format!("{b:?}").contains("secret"));
}

#[test]
fn entry_versions_and_times() {
    assert_eq!(
        entry_version(&json!({"response": {"etag": "W/\"4\""}})).as_deref(),
        Some("4")
    );
    assert_eq!(
        entry_version(&json!({"response": {"location": "Patient/1/_history/5"}})).as_deref(),
        Some("5")
    );
    assert_eq!(entry_version(&json!({"response": {}})), None);
    assert!(parse_any_time("2025-01-02T03:04:05.678Z").is_some());
    assert!(parse_any_time("Thu, 02 Jan 2025 03:04:05 GMT").is_some());
    assert!(parse_any_time("yesterday").is_none());
    assert_eq!(reference_target("Patient/1").as_deref(), Some("Patient/1"));
    assert_eq!(reference_target("#contained"), None);
}

#[test]
fn a_meta_source_the_server_stamped_is_not_content() {
    let new = json!({"resourceType": "Patient", "id": "p", "gender": "male"});
    let stamped = json!({"resourceType": "Patient", "id": "p", "gender": "male",
        "meta": {"source": "#a1b2c3"}});
    assert!(same_content(&stamped, &new));
    let profiled = json!({"resourceType": "Patient", "id": "p", "gender": "male",
        "meta": {"source": "#a1b2c3", "profile": ["x"]}});
    assert!(!same_content(&profiled, &new));
    // A source the upsert sets is content.
    let mut own = new.clone();
    own["meta"] = json!({"source": "#mine"});
    assert!(!same_content(&stamped, &own));
    assert!(!same_content(
        &stamped,
        &json!({"resourceType": "Patient", "id": "p"})
    ));
}
