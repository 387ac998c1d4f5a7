//! Lambda `validate`: see `fhir_unify::handlers::validate`.

use fhir_unify::handlers::validate;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = fhir_unify::lambda::validate_env()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env = env.clone();
        async move {
            let input = fhir_unify::handlers::errors::parse_payload(event.payload)?;
            validate::handle(input, &env).await
        }
    }))
    .await
}
