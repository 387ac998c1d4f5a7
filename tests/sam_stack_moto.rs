//! `infra/template.yaml` as AWS would deploy it: transformed from SAM to plain CloudFormation
//! by aws-sam-translator (`tools/sam_translate.py`, run with the project's `.venv`), then
//! created as a stack in the emulator's CloudFormation (moto's server); the stack must reach
//! CREATE_COMPLETE, and the tables, queues, bus, buckets and state machine must then exist in
//! the emulator as the template describes them, checked through the SDK.
//!
//! moto's CloudFormation skips resource types it does not implement (and still completes the
//! stack); the script names them, and this test pins the list, so a skipped type is never
//! mistaken for a created one.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod moto;
}

use std::path::PathBuf;
use std::process::Command;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use common::aws::sdk;
use common::moto::Moto;
use serde_json::{Value, json};

const STACK: &str = "fu";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the translator (and the deploy, given an endpoint); its JSON report.
fn sam_translate(args: &[&str]) -> Value {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh, which installs tools/requirements.txt there",
        python.display()
    );
    let out = Command::new(python)
        .arg(root().join("tools/sam_translate.py"))
        .arg(root().join("infra/template.yaml"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sam_translate.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The source table the stack's event source mapping reads (`SourceStreamArn`).
async fn source_stream(config: &SdkConfig) -> String {
    let ddb = aws_sdk_dynamodb::Client::new(config);
    let created = ddb
        .create_table()
        .table_name("Patients")
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    created
        .table_description()
        .unwrap()
        .latest_stream_arn()
        .unwrap()
        .to_owned()
}

fn physical(report: &Value, logical: &str) -> String {
    let r = &report["resources"][logical];
    assert_eq!(r["status"], "CREATE_COMPLETE", "{logical}: {r}");
    assert_eq!(r["createdByEmulator"], true, "{logical}: {r}");
    r["physical"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_transformed_template_deploys_as_a_stack_and_its_resources_exist() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;
    let stream = source_stream(&config).await;
    let report = sam_translate(&[
        "--endpoint",
        &moto.endpoint,
        "--stack",
        STACK,
        "--parameter",
        &format!("SourceStreamArn={stream}"),
        "--parameter",
        "DmsBucketName=fu-dms-landing",
        "--parameter",
        "TransferBucketName=fu-transfer-landing",
    ]);
    assert_eq!(
        report["status"], "CREATE_COMPLETE",
        "stack: {}",
        report["reason"]
    );

    // What moto 5.2.5's CloudFormation does not implement, and so does not create (the HTTP
    // API, alarms, bucket and queue policies, asynchronous invoke configs). Everything else
    // of the transformed template is created.
    assert_eq!(
        report["unsupported"],
        json!([
            "AWS::ApiGatewayV2::Api",
            "AWS::ApiGatewayV2::Stage",
            "AWS::CloudWatch::Alarm",
            "AWS::Lambda::EventInvokeConfig",
            "AWS::S3::BucketPolicy",
            "AWS::SQS::QueuePolicy",
        ])
    );
    let transformed = report["transformedResources"].as_object().unwrap();
    let not_created: Vec<&str> = report["notCreated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(not_created.contains(&"FhirHttpApi"), "{not_created:?}");
    assert!(not_created.contains(&"QuarantineDepthAlarm"));
    for (logical, kind) in transformed {
        if !not_created.contains(&logical.as_str()) {
            let r = &report["resources"][logical];
            assert_eq!(r["type"], *kind, "{logical}");
            assert_eq!(r["status"], "CREATE_COMPLETE", "{logical}: {r}");
        }
    }
    // The translator's work: one Lambda function per functions/ crate, each HTTP API route's
    // invoke permission, the authorizer's permission, the event source mapping, the rules.
    for logical in [
        "IngestDynamoDbFunction",
        "IngestDmsFunction",
        "IngestTransferFunction",
        "IngestApiFunction",
        "GatewayFunction",
        "AuthorizerFunction",
        "TransformFunction",
        "ValidateFunction",
        "PublishFunction",
        "EmitFunction",
        "IngestDynamoDbFunctionStream",
        "IngestDmsFunctionObjectCreated",
        "IngestTransferFunctionObjectCreated",
        "GatewayFunctionMetadataPermission",
        "IngestApiFunctionPostPermission",
        "FhirHttpApiPartnerAuthorizerAuthorizerPermission",
    ] {
        physical(&report, logical);
    }

    // The store table: keys, on-demand, its stream (the outbox).
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let table = physical(&report, "FhirStoreTable");
    let described = ddb
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let t = described.table().unwrap();
    let keys: Vec<(&str, &str)> = t
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().as_str()))
        .collect();
    assert_eq!(keys, [("pk", "HASH"), ("sk", "RANGE")]);
    let stream = t.stream_specification().unwrap();
    assert!(stream.stream_enabled());
    assert_eq!(stream.stream_view_type(), Some(&StreamViewType::NewImage));
    assert_eq!(
        report["outputs"]["FhirStoreTableName"].as_str(),
        Some(table.as_str())
    );

    // The queues, the quarantine one redriving to its dead-letter queue after 5 receives.
    let sqs = aws_sdk_sqs::Client::new(&config);
    let arn_of = |url: String| {
        let sqs = sqs.clone();
        async move {
            let a = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .unwrap();
            a.attributes().unwrap().clone()
        }
    };
    let dead = arn_of(physical(&report, "QuarantineDeadLetterQueue")).await;
    let quarantine = arn_of(physical(&report, "QuarantineQueue")).await;
    let redrive: Value =
        serde_json::from_str(&quarantine[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy])
            .unwrap();
    assert_eq!(
        redrive["deadLetterTargetArn"].as_str(),
        Some(dead[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].as_str())
    );
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "5"
    );
    for q in ["StreamFailureQueue", "FileIngestFailureQueue"] {
        let a = arn_of(physical(&report, q)).await;
        assert_eq!(
            a[&aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod],
            "1209600",
            "{q}"
        );
    }

    // The change-event bus and its archive.
    let events = aws_sdk_eventbridge::Client::new(&config);
    let bus = events
        .describe_event_bus()
        .name(format!("{STACK}-changes"))
        .send()
        .await
        .unwrap();
    let bus_arn = bus.arn().unwrap().to_owned();
    let archives = events
        .list_archives()
        .event_source_arn(&bus_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(archives.archives().len(), 1, "{archives:?}");
    let rules = events.list_rules().send().await.unwrap();
    let rule_names: Vec<&str> = rules.rules().iter().filter_map(|r| r.name()).collect();
    assert!(
        rule_names
            .iter()
            .any(|n| n.contains("IngestDmsFunctionObjectCreated")),
        "{rule_names:?}"
    );

    // The landing buckets, by the names the parameters gave.
    let s3 = aws_sdk_s3::Client::new(&config);
    for (logical, name) in [
        ("DmsBucket", "fu-dms-landing"),
        ("TransferBucket", "fu-transfer-landing"),
    ] {
        assert_eq!(physical(&report, logical), name);
        s3.head_bucket().bucket(name).send().await.unwrap();
    }

    // The unify machine, with the definition of statemachines/unify.asl.json. moto 5.2.5's
    // CloudFormation passes only the name, definition, role and tags to CreateStateMachine:
    // it ignores StateMachineType, LoggingConfiguration and DefinitionSubstitutions, so the
    // machine it creates is STANDARD with the placeholders left in. Those properties are
    // checked on the transformed template instead, which is what CloudFormation receives.
    let sfn = aws_sdk_sfn::Client::new(&config);
    let machine = physical(&report, "UnifyStateMachine");
    let described = sfn
        .describe_state_machine()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap();
    let deployed: Value = serde_json::from_str(described.definition()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("statemachines/unify.asl.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(deployed, file);
    assert_eq!(
        report["outputs"]["UnifyStateMachineArn"].as_str(),
        Some(machine.as_str())
    );
}

#[test]
fn the_transformed_http_api_asks_the_authorizer_on_every_route_but_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("template.json");
    let report = sam_translate(&["--out", out.to_str().unwrap()]);
    assert_eq!(
        report["transformedResources"]["FhirHttpApi"],
        "AWS::ApiGatewayV2::Api"
    );
    let cfn: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let body = &cfn["Resources"]["FhirHttpApi"]["Properties"]["Body"];
    let authorizer = &body["components"]["securitySchemes"]["PartnerAuthorizer"]["x-amazon-apigateway-authorizer"];
    assert_eq!(authorizer["type"], "request");
    assert_eq!(authorizer["authorizerPayloadFormatVersion"], "2.0");
    assert_eq!(authorizer["enableSimpleResponses"], true);
    assert_eq!(
        authorizer["identitySource"],
        json!(["$request.header.Authorization"])
    );
    // The unify machine as CloudFormation receives it: Express, every placeholder of the
    // definition substituted (the emulator ignores both, see the stack test).
    let unify = &cfn["Resources"]["UnifyStateMachine"]["Properties"];
    assert_eq!(unify["StateMachineType"], "EXPRESS");
    let subs: Vec<&String> = unify["DefinitionSubstitutions"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        subs,
        [
            "EmitFunctionArn",
            "PublishFunctionArn",
            "QuarantineQueueUrl",
            "TransformFunctionArn",
            "ValidateFunctionArn"
        ]
    );
    assert_eq!(
        unify["DefinitionSubstitutions"]["TransformFunctionArn"],
        json!({ "Fn::GetAtt": ["TransformFunction", "Arn"] })
    );

    let paths = body["paths"].as_object().unwrap();
    let mut routes = Vec::new();
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            let secured = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s.get("PartnerAuthorizer").is_some()));
            routes.push(format!("{method} {path} secured={secured}"));
        }
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            "get /metadata secured=false",
            "get /{proxy+} secured=true",
            "head /{proxy+} secured=true",
            "post /ingest/{proxy+} secured=true",
            "put /ingest/{proxy+} secured=true",
        ]
    );
}
