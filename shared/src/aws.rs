//! SDK clients, built once per process. Every call goes through the SDK's
//! standard retry strategy (jittered exponential backoff on throttling,
//! 5xx and transient network errors).

use aws_config::{retry::RetryConfig, BehaviorVersion, SdkConfig};
use aws_smithy_http_client::{
    tls::{self, rustls_provider::CryptoMode},
    Builder,
};
use std::time::Duration;

/// The clients the system uses.
#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    /// The `lambda` processor's calls to a user's function.
    pub lambda: aws_sdk_lambda::Client,
    /// The `embeddings` processor's calls to Bedrock's models.
    pub bedrock: aws_sdk_bedrockruntime::Client,
    /// True when talking to an emulator (`AWS_ENDPOINT_URL` set): its
    /// ConsumedCapacity figures are placeholders, so costs are computed.
    pub emulated: bool,
}

/// Attempts per SDK call (first try included) before an error surfaces.
pub const MAX_ATTEMPTS: u32 = 8;

/// Loads region and credentials the usual way (environment, profile, role)
/// and honours `AWS_ENDPOINT_URL` for local emulators.
pub async fn load_sdk_config() -> SdkConfig {
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    #[cfg(any(test, feature = "testing"))]
    let http = crate::faults::FaultyClient::from_env(http);
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .load()
        .await
}

impl Clients {
    pub fn from_config(config: &SdkConfig) -> Self {
        let emulated = std::env::var_os("AWS_ENDPOINT_URL").is_some();
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            // Emulators are addressed by host name without bucket subdomains.
            .force_path_style(emulated)
            .build();
        Clients {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            eventbridge: aws_sdk_eventbridge::Client::new(config),
            lambda: aws_sdk_lambda::Client::new(config),
            bedrock: aws_sdk_bedrockruntime::Client::new(config),
            emulated,
        }
    }

    pub async fn load() -> Self {
        Self::from_config(&load_sdk_config().await)
    }
}
