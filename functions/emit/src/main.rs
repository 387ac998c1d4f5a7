//! Lambda `emit`: see `fhir_unify::handlers::emit` and, with the DynamoDB store (the table's
//! stream as the outbox, through an event source mapping), `fhir_unify::handlers::emit_stream`.

use fhir_unify::handlers::emit_stream;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let (env, stream_mode) = fhir_unify::lambda::emit_env()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env = env.clone();
        async move { emit_stream::dispatch(event.payload, &env, stream_mode).await }
    }))
    .await
}
