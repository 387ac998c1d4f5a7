//! Lambda `ingest-transfer`: see `fhir_unify::handlers::ingest_transfer`. Takes a Transfer
//! Family "File Upload Completed" event, an S3 event notification or an EventBridge "Object
//! Created" event; answers with what it read.
//!
//! Until the S3 and SQS adapters arrive with the deploy work, the function runs the embedded
//! runtime (`unify` on the ASL engine, the local queue for quarantine) and reads transfer
//! sources whose location is a local folder; a pipeline file naming an `s3://` location fails
//! the cold start with that reason.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let (runtime, objects) = fhir_unify::lambda::transfer_env()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let runtime = runtime.clone();
        let objects = objects.clone();
        async move {
            let o = runtime.deliver_transfer(event.payload, objects).await?;
            Ok::<Value, Error>(json!({
                "objects": o.objects,
                "files": o.files.len(),
                "changes": o.records_in,
                "quarantined": o.rejected.len(),
                "skipped": o.skipped.len(),
                "executions": o.runs.len(),
            }))
        }
    }))
    .await
}
