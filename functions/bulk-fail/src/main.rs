//! Lambda `bulk-fail`, a task of `statemachines/bulk-load.asl.json`: marks the version FAILED with the caught error; the pointer stays.
//! See `fhir_unify::bulk`; the environment (DynamoDB versions table, SSM pointer, S3 files,
//! SQS quarantine) is `fhir_unify::lambda::bulk_env`.

use fhir_unify::bulk::local::{BulkStep, invoke};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = fhir_unify::lambda::bulk_env(false).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env = env.clone();
        async move { invoke(BulkStep::Fail, event.payload, &env).await }
    }))
    .await
}
