//! Lambda `emit`: see `fhir_unify::handlers::emit`.

use fhir_unify::handlers::emit;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = fhir_unify::lambda::step_env()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env = env.clone();
        async move { emit::handle(event.payload, &env).await }
    }))
    .await
}
