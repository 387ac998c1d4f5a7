//! Lambda `ingest-transfer`: see `fhir_unify::handlers::ingest_transfer`. Takes a Transfer
//! Family "File Upload Completed" event, an S3 event notification or an EventBridge "Object
//! Created" event; answers with what it read.
//!
//! Transfer sources at an `s3://` location are read from S3; batches go to the `unify` state
//! machine on Step Functions when the stack names it (`FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN`),
//! else to the embedded runtime (`unify` on the ASL engine).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let ingress = std::sync::Arc::new(fhir_unify::lambda::transfer_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let ingress = ingress.clone();
        async move {
            let o = ingress.deliver_transfer(event.payload).await?;
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
