//! The one place AWS SDK clients get their configuration: region, credentials and endpoint
//! from the standard chain (environment, profile, the Lambda role), over one HTTPS client on
//! rustls with the `ring` provider (the SDK's default provider, aws-lc, is a long C build).
//!
//! `AWS_ENDPOINT_URL` (or a service's own `AWS_ENDPOINT_URL_<SERVICE>`) points every client
//! at an emulator: the tests run the real SDK against moto's server that way.

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// Loads the shared SDK configuration once; build each service client from it with
/// `aws_sdk_<service>::Client::new(&config)`.
pub async fn sdk_config() -> SdkConfig {
    loader().load().await
}

/// The configuration loader with the project's HTTPS client, for callers (and tests) that
/// set a region, endpoint or credentials explicitly before loading. Every SDK configuration
/// must come from here: the SDK is built without a default HTTP client.
pub fn loader() -> ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoint_and_region_come_from_the_environment_chain() {
        // Explicit provider overrides rather than process-wide env vars: tests run in parallel.
        let config = loader()
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:9")
            .load()
            .await;
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:9"));
        // The project's own loader builds without panicking when nothing is configured.
        let _ = sdk_config().await;
    }
}
