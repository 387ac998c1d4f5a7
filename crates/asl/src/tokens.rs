//! Task tokens of the `.waitForTaskToken` integration pattern: a Task state hands a token to
//! its function or service and waits, without polling, until the token is answered
//! (SendTaskSuccess, SendTaskFailure) or its heartbeat or timeout expires.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::mpsc;

/// What a token holder sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenAnswer {
    Success(Value),
    Failure {
        error: Option<String>,
        cause: Option<String>,
    },
    Heartbeat,
}

/// Why a SendTask* call was refused, as Step Functions names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskTokenError {
    /// The token was never issued by this engine.
    #[error("InvalidToken: Invalid Token: '{0}'")]
    InvalidToken(String),
    /// The task the token belonged to has already ended (answered, timed out or failed).
    #[error("TaskTimedOut: Task Timed Out: 'Provided task does not exist anymore'")]
    TaskTimedOut,
}

#[derive(Debug, Default)]
pub(crate) struct Tokens {
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<TokenAnswer>>>,
    issued: Mutex<HashSet<String>>,
}

impl Tokens {
    /// Issues a token and the receiver its task waits on.
    pub(crate) fn issue(&self) -> (String, mpsc::UnboundedReceiver<TokenAnswer>) {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(token.clone(), tx);
        }
        if let Ok(mut i) = self.issued.lock() {
            i.insert(token.clone());
        }
        (token, rx)
    }

    /// The task stopped waiting: later answers are refused as timed out.
    pub(crate) fn retire(&self, token: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(token);
        }
    }

    pub(crate) fn send(&self, token: &str, answer: TokenAnswer) -> Result<(), TaskTokenError> {
        let sender = self.waiting.lock().ok().and_then(|w| w.get(token).cloned());
        match sender {
            Some(tx) => tx.send(answer).map_err(|_| TaskTokenError::TaskTimedOut),
            None if self.issued.lock().is_ok_and(|i| i.contains(token)) => {
                Err(TaskTokenError::TaskTimedOut)
            }
            None => Err(TaskTokenError::InvalidToken(token.to_string())),
        }
    }
}
