//! The SAM template (`infra/template.yaml`) against the code it deploys: every environment
//! variable a function reads is set, none is set that nothing reads, every function crate is
//! deployed and every deployed function is a crate, and every state machine placeholder is
//! substituted (and nothing else), and the DynamoDB tables are those the stores expect.
//! cfn-lint and asl-validator (scripts/test.sh) check the template and definitions against
//! AWS's rules; this checks them against the code.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn template() -> Value {
    let path = root().join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Environment variable names read by a Rust source, outside its `#[cfg(test)]` part:
/// `var("X")`, `var_os("X")`, and `RUST_LOG` through tracing-subscriber's default filter.
fn env_reads(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    for call in ["var(\"", "var_os(\""] {
        let mut rest = code;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            let end = rest.find('"').unwrap();
            names.insert(rest[..end].to_owned());
        }
    }
    if code.contains("EnvFilter::try_from_default_env")
        || code.contains("EnvFilter::from_default_env")
    {
        names.insert("RUST_LOG".to_owned());
    }
    names
}

/// Variables the Lambda service sets itself in every execution environment (reserved: a
/// template may not set them).
const SET_BY_LAMBDA: &[&str] = &[
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_REGION",
    "_X_AMZN_TRACE_ID",
];

/// What the code deployed as a Lambda reads: `src/lambda.rs`, every `functions/*` crate, and
/// every library module they reach (all of `src/` except the CLI and test-only files).
fn variables_read_by_functions() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("functions"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let rel = file
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let cli_or_test = rel == "src/main.rs"
            || rel.starts_with("src/cli/")
            || rel.contains("/tests/")
            || rel.ends_with("_tests.rs")
            || rel.ends_with("/tests.rs");
        if cli_or_test {
            continue;
        }
        names.extend(env_reads(&std::fs::read_to_string(&file).unwrap()));
    }
    names.retain(|n| !SET_BY_LAMBDA.contains(&n.as_str()));
    names
}

fn variables(properties: &Value) -> BTreeSet<String> {
    properties["Environment"]["Variables"]
        .as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Each `AWS::Serverless::Function` by logical id, with its properties.
fn functions(template: &Value) -> BTreeMap<String, Value> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(id, r)| (id.as_str().unwrap().to_owned(), r["Properties"].clone()))
        .collect()
}

/// Variables only some functions read (each by a function-specific environment builder in
/// `src/lambda.rs`), with the template's functions that must set them; every other function
/// must not.
const FUNCTION_SPECIFIC: &[(&str, &[&str])] = &[
    // lambda::publish_env, lambda::api_env, lambda::gateway_env, lambda::emit_env: the store table.
    // lambda::bulk_env: the store table the pointer moves publish into (issue 7).
    (
        "FHIR_UNIFY_STORE_TABLE",
        &[
            "PublishFunction",
            "GatewayFunction",
            "IngestApiFunction",
            "EmitFunction",
            "BulkBeginFunction",
            "BulkLoadChunkFunction",
            "BulkFinalizeFunction",
            "BulkFailFunction",
        ],
    ),
    // lambda::bulk_env: dataset versions in DynamoDB, pointers in SSM (issue 7);
    // lambda::gateway_env: reads by id follow the pointers during a move.
    (
        "FHIR_UNIFY_VERSIONS_TABLE",
        &[
            "GatewayFunction",
            "BulkBeginFunction",
            "BulkLoadChunkFunction",
            "BulkFinalizeFunction",
            "BulkFailFunction",
        ],
    ),
    // lambda::bulk_env: rejected records of bulk loads go to SQS (issue 7).
    // lambda::dms_env, lambda::transfer_env: what those functions refuse themselves.
    (
        "FHIR_UNIFY_QUARANTINE_QUEUE_URL",
        &[
            "BulkLoadChunkFunction",
            "IngestDmsFunction",
            "IngestTransferFunction",
        ],
    ),
    // lambda::publish_env and gateway_env: the `rest` store (HealthLake), only when the
    // stack is given one.
    (
        "FHIR_UNIFY_FHIR_ENDPOINT",
        &["GatewayFunction", "PublishFunction"],
    ),
    // lambda::publish_env: the `rest` store's change-event ledger (HealthLake mode).
    ("FHIR_UNIFY_LEDGER_TABLE", &["PublishFunction"]),
    // lambda::ingest_env and the other ingress builders: unify on Step Functions.
    (
        "FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN",
        &[
            "IngestDynamoDbFunction",
            "IngestDmsFunction",
            "IngestTransferFunction",
            "IngestApiFunction",
        ],
    ),
    // lambda::ingress: full-refresh uploads start bulk-load (ingest-transfer only).
    (
        "FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN",
        &["IngestTransferFunction"],
    ),
];

/// Variables the template sets for code that arrives from work done at the same time on
/// another branch, with the functions that set them and the reason. Nothing may read one yet:
/// when the code that reads it is merged, this test fails until the variable moves to
/// `FUNCTION_SPECIFIC` (which then checks it like the others).
const SET_FOR_ARRIVING_CODE: &[(&str, &[&str], &str)] = &[];

#[test]
fn every_variable_a_function_reads_is_set_and_none_other() {
    let mut read = variables_read_by_functions();
    let template = template();
    for (name, setters, why) in SET_FOR_ARRIVING_CODE {
        assert!(
            !read.contains(*name),
            "{name} is read now: move it from SET_FOR_ARRIVING_CODE to FUNCTION_SPECIFIC ({why})"
        );
        for (id, properties) in functions(&template) {
            assert_eq!(
                variables(&properties).contains(*name),
                setters.contains(&id.as_str()),
                "{id}: {name} must be set on {setters:?} only"
            );
        }
    }
    for (name, setters) in FUNCTION_SPECIFIC {
        assert!(
            read.remove(*name),
            "{name} is listed as function-specific but nothing reads it"
        );
        for (id, properties) in functions(&template) {
            assert_eq!(
                variables(&properties).contains(*name),
                setters.contains(&id.as_str()),
                "{id}: {name} must be set on {setters:?} only"
            );
        }
    }
    assert!(
        read.contains("FHIR_UNIFY_CONFIG") && read.contains("FHIR_UNIFY_DATA_DIR"),
        "the scan found {read:?}: it no longer sees src/lambda.rs"
    );
    let global = variables(&template["Globals"]["Function"]);
    let functions = functions(&template);
    assert!(!functions.is_empty());
    for (id, properties) in &functions {
        let mut set: BTreeSet<String> = global.union(&variables(properties)).cloned().collect();
        set.retain(|n| FUNCTION_SPECIFIC.iter().all(|(f, _)| f != n));
        set.retain(|n| SET_FOR_ARRIVING_CODE.iter().all(|(f, _, _)| f != n));
        let missing: Vec<_> = read.difference(&set).collect();
        let unused: Vec<_> = set.difference(&read).collect();
        assert!(
            missing.is_empty(),
            "{id}: the code reads {missing:?}, the template does not set them"
        );
        assert!(
            unused.is_empty(),
            "{id}: the template sets {unused:?}, nothing reads them"
        );
    }
}

#[test]
fn the_scan_finds_reads_and_skips_tests() {
    let source = r#"
        fn a() { std::env::var_os("ONE"); std::env::var("TWO").ok(); }
        fn b() { tracing_subscriber::EnvFilter::try_from_default_env(); }
        #[cfg(test)]
        mod tests { fn c() { std::env::var("ONLY_IN_TESTS"); } }
    "#;
    let names: Vec<_> = env_reads(source).into_iter().collect();
    assert_eq!(names, ["ONE", "RUST_LOG", "TWO"]);
}

/// Function crates the template does not deploy yet, each with what it waits for. A function
/// leaves this list in the commit that adds it to the template.
const NOT_DEPLOYED_YET: &[(&str, &str)] = &[];

#[test]
fn every_function_crate_is_deployed_from_its_package() {
    let all: BTreeSet<String> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (name, why) in NOT_DEPLOYED_YET {
        assert!(
            all.contains(*name),
            "{name} is listed as not deployed ({why}) but has no crate"
        );
    }
    let crates: BTreeSet<String> = all
        .iter()
        .filter(|c| NOT_DEPLOYED_YET.iter().all(|(n, _)| n != c))
        .cloned()
        .collect();
    let template = template();
    let deployed: BTreeSet<String> = functions(&template)
        .values()
        .map(|p| {
            let uri = p["CodeUri"].as_str().unwrap();
            let name = uri
                .strip_prefix("../target/lambda/")
                .and_then(|r| r.strip_suffix("/bootstrap.zip"))
                .unwrap_or_else(|| panic!("CodeUri {uri} is not a scripts/package.sh artifact"));
            name.to_owned()
        })
        .collect();
    assert_eq!(crates, deployed);
    // Binaries keep their package's name: five `bootstrap` bins would overwrite each other in
    // target/ (cargo's output filename collision) and each test would run whichever came
    // last. scripts/package.sh names the file `bootstrap` in the zip.
    for name in &all {
        let manifest =
            std::fs::read_to_string(root().join("functions").join(name).join("Cargo.toml"))
                .unwrap();
        assert!(
            !manifest.contains("name = \"bootstrap\""),
            "functions/{name}: leave the binary its package's name"
        );
    }
    for (id, p) in functions(&template) {
        for key in ["MemorySize", "Timeout", "Role", "LoggingConfig"] {
            assert!(!p[key].is_null(), "{id} has no {key}");
        }
    }
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(globals["Handler"].as_str(), Some("bootstrap"));
}

/// `${Name}` placeholders in an ASL file.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let end = rest.find('}').unwrap();
        names.insert(rest[..end].to_owned());
    }
    names
}

/// State machines that run locally but are not in the template yet, with the reason. The
/// test below fails when one of them is deployed (remove it here) or its file is gone.
const MACHINES_NOT_DEPLOYED_YET: &[(&str, &str)] = &[];

#[test]
fn every_state_machine_is_deployed_with_each_placeholder_substituted() {
    let template = template();
    let machines: BTreeMap<String, BTreeSet<String>> = template["Resources"]
        .as_mapping()
        .unwrap()
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Serverless::StateMachine"))
        .map(|r| {
            let uri = r["Properties"]["DefinitionUri"]
                .as_str()
                .unwrap()
                .to_owned();
            let subs = r["Properties"]["DefinitionSubstitutions"]
                .as_mapping()
                .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            (uri, subs)
        })
        .collect();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("statemachines")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".asl.json") {
            continue;
        }
        let uri = format!("../statemachines/{name}");
        if let Some((_, why)) = MACHINES_NOT_DEPLOYED_YET.iter().find(|(n, _)| *n == name) {
            assert!(
                !machines.contains_key(&uri),
                "{uri} is deployed now: remove it from MACHINES_NOT_DEPLOYED_YET ({why})"
            );
            continue;
        }
        let subs = machines
            .get(&uri)
            .unwrap_or_else(|| panic!("{uri} is not deployed by infra/template.yaml"));
        let wanted = placeholders(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(
            &wanted, subs,
            "{uri}: placeholders vs DefinitionSubstitutions"
        );
        files.insert(uri);
    }
    assert_eq!(files, machines.keys().cloned().collect());
    for (name, why) in MACHINES_NOT_DEPLOYED_YET {
        assert!(
            root().join("statemachines").join(name).is_file(),
            "{name} is listed as not deployed ({why}) but has no file"
        );
    }
}

/// `(tag, value)` of a short-form intrinsic function (`!Ref X` is `("!Ref", "X")`).
fn intrinsic(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((t.tag.to_string(), &t.value)),
        _ => None,
    }
}

fn is_ref(v: &Value, target: &str) -> bool {
    intrinsic(v).is_some_and(|(tag, value)| tag == "!Ref" && value.as_str() == Some(target))
}

#[test]
fn the_http_api_sends_reads_to_gateway_writes_to_ingest_api_and_asks_the_authorizer() {
    let template = template();
    let mut routes = BTreeSet::new();
    for (id, properties) in functions(&template) {
        let Some(events) = properties["Events"].as_mapping() else {
            continue;
        };
        for event in events.values() {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let p = &event["Properties"];
            assert!(is_ref(&p["ApiId"], "FhirHttpApi"), "{id}: {p:?}");
            let open = p["Auth"]["Authorizer"].as_str() == Some("NONE");
            routes.insert((
                id.clone(),
                p["Method"].as_str().unwrap().to_owned(),
                p["Path"].as_str().unwrap().to_owned(),
                open,
            ));
        }
    }
    let expected: BTreeSet<(String, String, String, bool)> = [
        ("GatewayFunction", "GET", "/metadata", true),
        ("GatewayFunction", "GET", "/{proxy+}", false),
        ("GatewayFunction", "HEAD", "/{proxy+}", false),
        ("IngestApiFunction", "POST", "/ingest/{proxy+}", false),
        ("IngestApiFunction", "PUT", "/ingest/{proxy+}", false),
    ]
    .into_iter()
    .map(|(f, m, p, o)| (f.to_owned(), m.to_owned(), p.to_owned(), o))
    .collect();
    assert_eq!(routes, expected);

    // The gateway takes the FHIR path from the `proxy` path parameter
    // (handlers::gateway::request_v2); the authorizer answers a payload 2.0 event with a
    // simple response (handlers::authorizer::handle), so the API must ask for exactly that.
    let api = &template["Resources"]["FhirHttpApi"];
    assert_eq!(api["Type"].as_str(), Some("AWS::Serverless::HttpApi"));
    let auth = &api["Properties"]["Auth"];
    assert_eq!(
        auth["DefaultAuthorizer"].as_str(),
        Some("PartnerAuthorizer")
    );
    let authorizer = &auth["Authorizers"]["PartnerAuthorizer"];
    let (tag, target) = intrinsic(&authorizer["FunctionArn"]).unwrap();
    assert_eq!(
        (tag.as_str(), target.as_str()),
        ("!GetAtt", Some("AuthorizerFunction.Arn"))
    );
    assert_eq!(
        authorizer["AuthorizerPayloadFormatVersion"].as_str(),
        Some("2.0")
    );
    assert_eq!(authorizer["EnableSimpleResponses"].as_bool(), Some(true));
    assert_eq!(
        authorizer["EnableFunctionDefaultPermissions"].as_bool(),
        Some(true)
    );
}

/// Every statement of a role's inline policies.
fn statements(template: &Value, role: &str) -> Vec<Value> {
    let policies = template["Resources"][role]["Properties"]["Policies"]
        .as_sequence()
        .unwrap();
    policies
        .iter()
        .flat_map(|p| {
            p["PolicyDocument"]["Statement"]
                .as_sequence()
                .unwrap()
                .clone()
        })
        .collect()
}

fn actions(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(a) => vec![a.clone()],
        Value::Sequence(v) => v.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_functions_that_start_unify_may_start_that_machine_and_nothing_else_may() {
    let template = template();
    for (id, properties) in functions(&template) {
        let starts = variables(&properties).contains("FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN");
        let role = intrinsic(&properties["Role"])
            .and_then(|(_, v)| v.as_str().map(|r| r.trim_end_matches(".Arn").to_owned()))
            .unwrap();
        let states: Vec<Value> = statements(&template, &role)
            .into_iter()
            .filter(|s| actions(s).iter().any(|a| a.starts_with("states:")))
            .collect();
        if starts {
            assert!(
                is_ref(
                    &properties["Environment"]["Variables"]["FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN"],
                    "UnifyStateMachine"
                ),
                "{id}"
            );
            let bulk = variables(&properties).contains("FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN");
            assert_eq!(states.len(), 1 + usize::from(bulk), "{id}: {states:?}");
            assert_eq!(actions(&states[0]), ["states:StartSyncExecution"], "{id}");
            assert!(is_ref(&states[0]["Resource"], "UnifyStateMachine"), "{id}");
            if bulk {
                // Full-refresh uploads: one standard execution of bulk-load, nothing else.
                assert!(
                    is_ref(
                        &properties["Environment"]["Variables"]["FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN"],
                        "BulkLoadStateMachine"
                    ),
                    "{id}"
                );
                assert_eq!(actions(&states[1]), ["states:StartExecution"], "{id}");
                assert!(
                    is_ref(&states[1]["Resource"], "BulkLoadStateMachine"),
                    "{id}"
                );
            }
        } else {
            assert!(states.is_empty(), "{id} may not start state machines");
        }
    }
}

#[test]
fn healthlake_is_reached_only_by_publish_and_the_gateway_and_only_when_given() {
    let template = template();
    let mut allowed = BTreeSet::new();
    for (id, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::IAM::Role") {
            continue;
        }
        let role = id.as_str().unwrap();
        for statement in statements(&template, role) {
            assert!(
                !actions(&statement)
                    .iter()
                    .any(|a| a.starts_with("healthlake:")),
                "{role}: HealthLake actions outside the UseHealthLake condition"
            );
            let Some((tag, branches)) = intrinsic(&statement) else {
                continue;
            };
            let branches = branches.as_sequence().unwrap();
            assert_eq!(tag, "!If", "{role}");
            assert_eq!(branches[0].as_str(), Some("UseHealthLake"), "{role}");
            assert!(is_ref(&branches[2], "AWS::NoValue"), "{role}");
            let granted = &branches[1];
            assert!(
                actions(granted)
                    .iter()
                    .all(|a| a.starts_with("healthlake:")),
                "{role}"
            );
            assert!(
                is_ref(&granted["Resource"], "HealthLakeDatastoreArn"),
                "{role}"
            );
            allowed.insert(role.to_owned());
        }
    }
    assert_eq!(
        allowed,
        BTreeSet::from(["GatewayRole".to_owned(), "PublishRole".to_owned()])
    );
    // The gateway only reads.
    for statement in statements(&template, "GatewayRole") {
        if let Some((_, branches)) = intrinsic(&statement) {
            let granted = actions(&branches.as_sequence().unwrap()[1]);
            assert_eq!(
                granted,
                [
                    "healthlake:ReadResource",
                    "healthlake:SearchWithGet",
                    "healthlake:SearchWithPost"
                ]
            );
        }
    }
    // The endpoint reaches publish and the gateway only, under the same condition.
    let mut reached = BTreeSet::new();
    for (id, properties) in functions(&template) {
        let endpoint = &properties["Environment"]["Variables"]["FHIR_UNIFY_FHIR_ENDPOINT"];
        if endpoint.is_null() {
            continue;
        }
        let (tag, branches) = intrinsic(endpoint).unwrap();
        let branches = branches.as_sequence().unwrap();
        assert_eq!(
            (tag.as_str(), branches[0].as_str()),
            ("!If", Some("UseHealthLake")),
            "{id}"
        );
        assert!(is_ref(&branches[1], "HealthLakeDatastoreEndpoint"), "{id}");
        assert!(is_ref(&branches[2], "AWS::NoValue"), "{id}");
        reached.insert(id.clone());
    }
    assert_eq!(
        reached,
        BTreeSet::from(["GatewayFunction".to_owned(), "PublishFunction".to_owned()])
    );
}

/// `(attribute, key type)` of a DynamoDB table the template declares.
fn key_schema(template: &Value, table: &str) -> Vec<(String, String)> {
    let table = &template["Resources"][table];
    assert_eq!(table["Type"].as_str(), Some("AWS::DynamoDB::Table"));
    table["Properties"]["KeySchema"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["AttributeName"].as_str().unwrap().to_owned(),
                k["KeyType"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The tables the stores create for their tests (`create_table`) are the ones the template
/// declares: the same keys, on demand; the store's stream carries new images for `emit`.
#[test]
fn the_template_declares_the_tables_the_stores_expect() {
    use fhir_unify::store::dynamodb::{PK, SK};
    let template = template();
    let hash_range = |h: &str, r: &str| {
        vec![
            (h.to_owned(), "HASH".to_owned()),
            (r.to_owned(), "RANGE".to_owned()),
        ]
    };

    assert_eq!(key_schema(&template, "FhirStoreTable"), hash_range(PK, SK));
    let store = &template["Resources"]["FhirStoreTable"]["Properties"];
    for a in store["AttributeDefinitions"].as_sequence().unwrap() {
        assert_eq!(a["AttributeType"].as_str(), Some("S"));
    }
    assert_eq!(
        store["StreamSpecification"]["StreamViewType"].as_str(),
        Some("NEW_IMAGE")
    );
    assert_eq!(store["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));

    // The REST store's ledger (src/store/ledger/dynamodb.rs): its stream drives emit.
    {
        use fhir_unify::store::ledger::dynamodb as ledger;
        assert_eq!(
            key_schema(&template, "FhirLedgerTable"),
            hash_range(ledger::PK, ledger::SK)
        );
        let table = &template["Resources"]["FhirLedgerTable"]["Properties"];
        assert_eq!(
            table["StreamSpecification"]["StreamViewType"].as_str(),
            Some("NEW_IMAGE")
        );
        assert_eq!(table["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));
        // Settled events expire by TTL; their REMOVE records are filtered out below.
        let ttl = &table["TimeToLiveSpecification"];
        assert_eq!(ttl["AttributeName"].as_str(), Some(ledger::EXPIRES_AT));
        assert_eq!(ttl["Enabled"].as_bool(), Some(true));
        let mapping = &template["Resources"]["EmitLedgerStreamMapping"]["Properties"];
        assert!(is_ref(&mapping["FunctionName"], "EmitFunction"));
        assert!(
            mapping["FilterCriteria"]["Filters"][0]["Pattern"]
                .as_str()
                .unwrap()
                .contains(&format!("\"prefix\": \"{}\"", ledger::EVENT_PREFIX))
        );
    }

    assert_eq!(
        key_schema(&template, "DatasetVersionsTable"),
        hash_range("pk", "sk")
    );
    let versions = &template["Resources"]["DatasetVersionsTable"]["Properties"];
    assert_eq!(versions["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));
    assert_eq!(
        versions["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
        Some(true)
    );
}

/// The gateway reads the store, the dataset versions (moves in flight, staged resources) and
/// the pointers (`ResolvedStore`), and writes nothing but its logs.
#[test]
fn the_gateway_reads_the_versions_and_pointers_and_writes_nothing() {
    let template = template();
    let mut versions = false;
    let mut pointers = false;
    for statement in statements(&template, "GatewayRole") {
        if intrinsic(&statement).is_some() {
            continue; // HealthLake's branch, checked above
        }
        for action in actions(&statement) {
            assert!(
                [
                    "dynamodb:GetItem",
                    "dynamodb:BatchGetItem",
                    "dynamodb:Query",
                    "ssm:GetParameter",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                ]
                .contains(&action.as_str()),
                "the gateway may {action}"
            );
        }
        let resource = &statement["Resource"];
        if intrinsic(resource).is_some_and(|(tag, v)| {
            tag == "!GetAtt" && v.as_str() == Some("DatasetVersionsTable.Arn")
        }) {
            assert_eq!(actions(&statement), ["dynamodb:GetItem", "dynamodb:Query"]);
            versions = true;
        }
        if actions(&statement) == ["ssm:GetParameter"] {
            let (tag, sub) = intrinsic(resource).unwrap();
            assert_eq!(tag, "!Sub");
            assert!(
                sub.as_str()
                    .unwrap()
                    .ends_with(":parameter/fhir-unify/datasets/*"),
                "{sub:?}"
            );
            pointers = true;
        }
    }
    assert!(versions && pointers);
}
