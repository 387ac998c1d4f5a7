//! Lambda `validate`: see `fhir_unify::handlers::validate`.

use fhir_unify::handlers::validate;
use fhir_unify::model::MappedBatch;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = fhir_unify::lambda::step_env()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<MappedBatch>| {
        let env = env.clone();
        async move { validate::handle(event.payload, &env).await }
    }))
    .await
}
