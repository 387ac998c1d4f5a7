//! Lambda `ingest-dynamodb`: see `fhir_unify::handlers::ingest_dynamodb`. Answers Lambda with
//! the partial-batch response (`batchItemFailures` by `SequenceNumber`).

use fhir_unify::handlers::ingest_dynamodb;
use fhir_unify::sources::dynamodb::DynamoDbStreamEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = std::sync::Arc::new(fhir_unify::lambda::ingest_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env = env.clone();
        async move {
            let input: DynamoDbStreamEvent =
                fhir_unify::handlers::errors::parse_payload(event.payload)?;
            ingest_dynamodb::handle(input, &env)
                .await
                .map(|o| o.response)
        }
    }))
    .await
}
