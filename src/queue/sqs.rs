//! The quarantine on AWS: an SQS queue (`aws-sdk-sqs`). A body over
//! [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES) is stored whole in S3 (when an overflow
//! bucket is given; its key is the body's SHA-256, so a resend stores nothing new) and the
//! queue gets an [`Oversized`] marker naming it; without a bucket the marker holds what fits
//! and names what was left out.

use async_trait::async_trait;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use super::{MAX_MESSAGE_BYTES, Oversized, Quarantine, QuarantineError};

/// Where bodies too large for a message are kept.
#[derive(Debug, Clone)]
pub struct OverflowBucket {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    /// Key prefix (e.g. `quarantine/`).
    pub prefix: String,
}

/// An SQS queue as the quarantine.
#[derive(Debug, Clone)]
pub struct SqsQuarantine {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    overflow: Option<OverflowBucket>,
}

impl SqsQuarantine {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQuarantine {
            client,
            queue_url: queue_url.into(),
            overflow: None,
        }
    }

    /// Stores bodies over the message limit in this bucket.
    pub fn with_overflow(mut self, overflow: OverflowBucket) -> Self {
        self.overflow = Some(overflow);
        self
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    fn error<E, R>(&self, e: &SdkError<E, R>) -> QuarantineError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let (message, retryable) = match e {
            SdkError::ServiceError(s) => (
                format!(
                    "{}: {}",
                    s.err().code().unwrap_or("SQS error"),
                    s.err().message().unwrap_or_default()
                ),
                s.err()
                    .code()
                    .is_some_and(|c| c.contains("Throttl") || c.contains("Internal")),
            ),
            SdkError::ConstructionFailure(_) => (format!("{e:?}"), false),
            other => (other.to_string(), true),
        };
        QuarantineError::Send {
            queue: self.queue_url.clone(),
            message,
            retryable,
        }
    }

    /// The body to send for `body`: itself, or a marker (after storing it, when there is an
    /// overflow bucket).
    async fn message_for(&self, body: &str) -> Result<String, QuarantineError> {
        if body.len() <= MAX_MESSAGE_BYTES {
            return Ok(body.to_owned());
        }
        let mut marker = Oversized::of(body, None);
        if let Some(o) = &self.overflow {
            let key = format!("{}{}.json", o.prefix, marker.sha256);
            o.client
                .put_object()
                .bucket(&o.bucket)
                .key(&key)
                .content_type("application/json")
                .body(body.as_bytes().to_vec().into())
                .send()
                .await
                .map_err(|e| QuarantineError::Overflow {
                    bucket: o.bucket.clone(),
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            marker.stored_at = Some(format!("s3://{}/{key}", o.bucket));
        }
        tracing::warn!(
            bytes = body.len(),
            stored = marker.stored_at.is_some(),
            omitted = ?marker.omitted,
            "quarantine message over the SQS limit: sent as an oversized marker"
        );
        Ok(marker.body())
    }
}

#[async_trait]
impl Quarantine for SqsQuarantine {
    async fn send(&self, body: &str) -> Result<String, QuarantineError> {
        let message = self.message_for(body).await?;
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message)
            .send()
            .await
            .map_err(|e| self.error(&e))?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }
}
