//! Lambda `publish`: see `fhir_unify::handlers::publish` (the store: `lambda::publish_env`).

use fhir_unify::handlers::publish;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = fhir_unify::lambda::publish_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env = env.clone();
        async move {
            let input = fhir_unify::handlers::errors::parse_payload(event.payload)?;
            publish::handle(input, &env).await
        }
    }))
    .await
}
