//! Lambda `ingest-api`: see `fhir_unify::handlers::ingest_api`. Takes API Gateway proxy events
//! (REST v1 or HTTP API v2) and answers with the proxy response of the same version.

use fhir_unify::handlers::ingest_api::{self, ApiEnv};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fhir_unify::lambda::init_tracing();
    let env = std::sync::Arc::new(fhir_unify::lambda::api_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let env: std::sync::Arc<ApiEnv> = env.clone();
        async move { ingest_api::handle(event.payload, &env).await }
    }))
    .await
}
