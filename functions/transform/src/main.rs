//! Lambda `transform`: see `fhir_unify::handlers::transform`.

use fhir_unify::handlers::transform;
use fhir_unify::model::ChangeBatch;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = fhir_unify::lambda::step_env()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<ChangeBatch>| {
        let env = env.clone();
        async move { transform::handle(event.payload, &env).await }
    }))
    .await
}
