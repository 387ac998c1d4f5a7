//! Local stand-ins for the optimized service integrations AWS Step Functions offers, answering
//! as AWS does: `events:putEvents` into an [`events::EventSink`] and `dynamodb:getItem`,
//! `putItem`, `updateItem`, `deleteItem` over a [`dynamodb::TableBackend`]. Register them with
//! [`crate::TaskRegistry::set_event_sink`] and [`crate::TaskRegistry::set_table_backend`].

pub mod dynamodb;
pub mod events;

use serde_json::{Value, json};

/// The `SdkHttpMetadata` / `SdkResponseMetadata` Step Functions adds to an optimized
/// integration's answer (the Java SDK's response metadata).
pub(crate) fn sdk_metadata(content_type: &str) -> (Value, Value) {
    let id = uuid::Uuid::new_v4().to_string();
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let http = json!({
        "AllHttpHeaders": {
            "Server": ["Server"],
            "Connection": ["keep-alive"],
            "x-amzn-RequestId": [id],
            "Content-Length": ["2"],
            "Date": [date],
            "Content-Type": [content_type]
        },
        "HttpHeaders": {
            "Connection": "keep-alive",
            "Content-Length": "2",
            "Content-Type": content_type,
            "Date": date,
            "Server": "Server",
            "x-amzn-RequestId": id
        },
        "HttpStatusCode": 200
    });
    (http, json!({"RequestId": id}))
}

/// The suffix the Java SDK (which Step Functions uses) adds to a service exception's message.
pub(crate) fn sdk_cause(message: &str, service: &str, code: &str) -> String {
    format!(
        "{message} (Service: {service}; Status Code: 400; Error Code: {code}; Request ID: {}; Proxy: null)",
        uuid::Uuid::new_v4()
    )
}
