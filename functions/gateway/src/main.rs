//! Lambda `gateway`: the partner FHIR API behind API Gateway (REST or HTTP API proxy events);
//! see `fhir_unify::handlers::gateway`. On AWS it reads the DynamoDB store named by
//! `FHIR_UNIFY_STORE_TABLE` (`fhir_unify::lambda::gateway_env`).

use fhir_unify::handlers::gateway;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let api = fhir_unify::lambda::gateway_env().await?;
    let api = &api;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        gateway::handle(event.payload, api).await
    }))
    .await
}
