//! Lambda `authorizer`: the REQUEST authorizer in front of the partner FHIR API (IAM policy for
//! REST APIs, simple response for HTTP APIs); see `fhir_unify::handlers::authorizer`.

use fhir_unify::handlers::authorizer;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let partners = fhir_unify::lambda::authorizer_env()?;
    let partners = &partners;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        authorizer::handle(event.payload, partners).await
    }))
    .await
}
