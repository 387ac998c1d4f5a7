//! Lambda `gateway`: the partner FHIR API behind API Gateway (REST or HTTP API proxy events);
//! see `fhir_unify::handlers::gateway`.

use fhir_unify::gateway::Gateway;
use fhir_unify::handlers::gateway;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let (config, data) = fhir_unify::lambda::load_config()?;
    let api = Gateway::from_config(&config, &data)?;
    let api = &api;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        gateway::handle(event.payload, api).await
    }))
    .await
}
