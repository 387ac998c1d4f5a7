//! Running a state machine without the code behind its tasks.
//!
//! Two forms: a *functions file* binds Lambda function names or ARNs to simple behaviours
//! (the `behavior` objects of the recorded conformance cases), and AWS Step Functions Local's
//! *mock configuration file* replaces the result of named Task states, test case by test case.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::task::{LambdaError, LambdaFunction, TaskRegistry};

/// A functions file or mock configuration that cannot be used, naming where it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MockError {
    /// The text is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A value has the wrong shape; `at` is a JSON-pointer-like location.
    #[error("{at}: {message}")]
    Invalid {
        /// Where, e.g. `/my-fn/raises` or `/MockedResponses/Ok/0-1`.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// `--test-case` names a case (or state machine) the file does not have.
    #[error("{0}")]
    NotFound(String),
}

fn invalid(at: impl Into<String>, message: impl Into<String>) -> MockError {
    MockError::Invalid {
        at: at.into(),
        message: message.into(),
    }
}

/// What a stand-in Lambda function does.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    outcome: Outcome,
    /// How long it takes first (on the engine's tokio clock, so virtual time skips it).
    pub sleep: Duration,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// `{"returns": "input"}`: echoes the payload.
    Identity,
    /// `{"returns": VALUE}`.
    Value(Value),
    /// `{"raises": TYPE, "message": TEXT}`.
    Raise { error_type: String, message: String },
}

impl Behavior {
    /// Parses one `behavior` object; `at` names it in errors.
    pub fn parse(v: &Value, at: &str) -> Result<Self, MockError> {
        let o = v
            .as_object()
            .ok_or_else(|| invalid(at, "a behaviour must be an object"))?;
        for k in o.keys() {
            if !["returns", "raises", "message", "sleep_seconds"].contains(&k.as_str()) {
                return Err(invalid(
                    format!("{at}/{k}"),
                    "unknown field (expected returns, raises, message, sleep_seconds)",
                ));
            }
        }
        let outcome = match (o.get("returns"), o.get("raises")) {
            (Some(_), Some(_)) => {
                return Err(invalid(at, "give either `returns` or `raises`, not both"));
            }
            (Some(Value::String(s)), None) if s == "input" => Outcome::Identity,
            (Some(v), None) => Outcome::Value(v.clone()),
            (None, Some(Value::String(t))) if !t.is_empty() => Outcome::Raise {
                error_type: t.clone(),
                message: match o.get("message") {
                    None => String::new(),
                    Some(Value::String(m)) => m.clone(),
                    Some(_) => return Err(invalid(format!("{at}/message"), "must be a string")),
                },
            },
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{at}/raises"),
                    "must be a non-empty error type name",
                ));
            }
            (None, None) => return Err(invalid(at, "needs `returns` or `raises`")),
        };
        let sleep = match o.get("sleep_seconds") {
            None => Duration::ZERO,
            Some(s) => s
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    invalid(
                        format!("{at}/sleep_seconds"),
                        "must be a non-negative number",
                    )
                })?,
        };
        Ok(Self { outcome, sleep })
    }
}

#[async_trait]
impl LambdaFunction for Behavior {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        if !self.sleep.is_zero() {
            tokio::time::sleep(self.sleep).await;
        }
        match &self.outcome {
            Outcome::Identity => Ok(payload),
            Outcome::Value(v) => Ok(v.clone()),
            Outcome::Raise {
                error_type,
                message,
            } => {
                // The error document a Lambda runtime writes for an unhandled exception.
                let raw = json!({
                    "errorMessage": message,
                    "errorType": error_type,
                    "requestId": uuid::Uuid::new_v4().to_string(),
                    "stackTrace": [],
                });
                Err(LambdaError {
                    error_type: error_type.clone(),
                    error_message: message.clone(),
                    raw_payload: Some(raw.to_string()),
                })
            }
        }
    }
}

/// Reads a functions file (a JSON object from function name or ARN to a behaviour) into
/// `registry`. An ARN registers the function under its name, as Task resources resolve it.
pub fn register_functions(registry: &mut TaskRegistry, text: &str) -> Result<usize, MockError> {
    let v: Value = serde_json::from_str(text).map_err(|e| MockError::NotJson(e.to_string()))?;
    let o = v
        .as_object()
        .ok_or_else(|| invalid("", "a functions file must be a JSON object"))?;
    for (key, b) in o {
        let behavior = Behavior::parse(b, &format!("/{key}"))?;
        registry.register_lambda(function_name(key), Arc::new(behavior));
    }
    Ok(o.len())
}

/// `arn:aws:lambda:region:account:function:name[:qualifier]` → `name`; a bare name as is.
fn function_name(key: &str) -> &str {
    let parts: Vec<&str> = key.split(':').collect();
    match parts.iter().position(|p| *p == "function") {
        Some(i) if key.starts_with("arn:") => parts.get(i + 1).copied().unwrap_or(key),
        _ => key,
    }
}

/// One mocked answer of a Task state.
#[derive(Debug, Clone, PartialEq)]
pub enum MockedResult {
    /// `Return`: the task's result (for `lambda:invoke`, the whole invoke response).
    Return(Value),
    /// `Throw`: the task fails with this Error and Cause.
    Throw {
        /// Error name.
        error: String,
        /// Cause text.
        cause: String,
    },
}

/// The mocked answers of one state, by invocation: answer `n` is for the `n`-th call
/// (0-based), the last one repeats.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MockedResponses {
    answers: Vec<MockedResult>,
}

impl MockedResponses {
    /// The answer for the `n`-th invocation (0-based); the last answer repeats past the end.
    pub fn answer(&self, n: usize) -> Option<&MockedResult> {
        self.answers.get(n).or_else(|| self.answers.last())
    }
}

/// The mocks of one test case: state name → its answers.
pub type TestCaseMocks = HashMap<String, MockedResponses>;

/// Reads AWS Step Functions Local's mock configuration and returns the state mocks of
/// `test_case` for the state machine `machine` (which may be left out when the file has
/// exactly one state machine).
pub fn load_test_case(
    text: &str,
    machine: Option<&str>,
    test_case: &str,
) -> Result<TestCaseMocks, MockError> {
    let v: Value = serde_json::from_str(text).map_err(|e| MockError::NotJson(e.to_string()))?;
    let machines = v
        .get("StateMachines")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("/StateMachines", "required object is missing"))?;
    let (sm_name, sm) = match machine {
        Some(m) => machines.get_key_value(m).ok_or_else(|| {
            MockError::NotFound(format!("no state machine '{m}' in StateMachines"))
        })?,
        None if machines.len() == 1 => machines
            .iter()
            .next()
            .ok_or_else(|| MockError::NotFound("StateMachines is empty".into()))?,
        None => {
            return Err(MockError::NotFound(format!(
                "the file has {} state machines; name one (--state-machine)",
                machines.len()
            )));
        }
    };
    let case = sm
        .get("TestCases")
        .and_then(|t| t.get(test_case))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            MockError::NotFound(format!(
                "no test case '{test_case}' in StateMachines/{sm_name}/TestCases"
            ))
        })?;
    let responses = v
        .get("MockedResponses")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("/MockedResponses", "required object is missing"))?;
    let mut out = TestCaseMocks::new();
    for (state, resp_name) in case {
        let at = format!("/StateMachines/{sm_name}/TestCases/{test_case}/{state}");
        let resp_name = resp_name
            .as_str()
            .ok_or_else(|| invalid(&at, "must name a MockedResponses entry"))?;
        let resp = responses
            .get(resp_name)
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(&at, format!("no MockedResponses entry '{resp_name}'")))?;
        out.insert(
            state.clone(),
            parse_responses(resp, &format!("/MockedResponses/{resp_name}"))?,
        );
    }
    Ok(out)
}

fn parse_responses(resp: &Map<String, Value>, at: &str) -> Result<MockedResponses, MockError> {
    let mut ranges: Vec<(usize, usize, MockedResult)> = Vec::new();
    for (key, r) in resp {
        let here = format!("{at}/{key}");
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| invalid(&here, "keys are invocation numbers: \"0\" or \"1-3\""))
        };
        let (lo, hi) = match key.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let n = parse(key)?;
                (n, n)
            }
        };
        if hi < lo {
            return Err(invalid(&here, "a range must not run backwards"));
        }
        let o = r
            .as_object()
            .ok_or_else(|| invalid(&here, "must be an object with Return or Throw"))?;
        let result = match (o.get("Return"), o.get("Throw")) {
            (Some(v), None) => MockedResult::Return(v.clone()),
            (None, Some(t)) => {
                let field = |f: &str| {
                    t.get(f)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| invalid(format!("{here}/Throw/{f}"), "must be a string"))
                };
                MockedResult::Throw {
                    error: field("Error")?,
                    cause: t
                        .get("Cause")
                        .map_or(Ok(String::new()), |_| field("Cause"))?,
                }
            }
            _ => return Err(invalid(&here, "needs exactly one of Return or Throw")),
        };
        ranges.push((lo, hi, result));
    }
    ranges.sort_by_key(|(lo, _, _)| *lo);
    let mut answers = Vec::new();
    for (lo, hi, result) in ranges {
        if lo != answers.len() {
            return Err(invalid(
                format!("{at}/{lo}"),
                format!(
                    "invocations must be numbered from 0 without gaps or overlaps (expected {})",
                    answers.len()
                ),
            ));
        }
        answers.extend(std::iter::repeat_n(result, hi - lo + 1));
    }
    if answers.is_empty() {
        return Err(invalid(at, "needs at least one response"));
    }
    Ok(MockedResponses { answers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaviours_return_echo_and_raise() {
        let mut reg = TaskRegistry::new();
        let n = register_functions(
            &mut reg,
            r#"{"echo": {"returns": "input"}, "arn:aws:lambda:us-east-1:1:function:fixed": {"returns": {"a": 1}},
                "boom": {"raises": "ValueError", "message": "bad"}}"#,
        )
        .unwrap();
        assert_eq!(n, 3);
        let echo = reg.lambda("echo").unwrap();
        assert_eq!(echo.invoke(json!([1])).await.unwrap(), json!([1]));
        let fixed = reg.lambda("fixed").unwrap();
        assert_eq!(fixed.invoke(json!(null)).await.unwrap(), json!({"a": 1}));
        let e = reg
            .lambda("boom")
            .unwrap()
            .invoke(json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.error_type, "ValueError");
        let doc: Value = serde_json::from_str(&e.payload_text()).unwrap();
        assert_eq!(doc["errorMessage"], "bad");
        assert_eq!(doc["errorType"], "ValueError");
    }

    #[test]
    fn bad_functions_files_say_where() {
        let mut reg = TaskRegistry::new();
        for (text, at) in [
            (r#"{"f": {"returns": 1, "raises": "E"}}"#, "/f"),
            (r#"{"f": {"raises": 3}}"#, "/f/raises"),
            (
                r#"{"f": {"returns": 1, "sleep_seconds": -1}}"#,
                "/f/sleep_seconds",
            ),
            (r#"{"f": {"return": 1}}"#, "/f/return"),
            (r#"{"f": 1}"#, "/f"),
        ] {
            match register_functions(&mut reg, text) {
                Err(MockError::Invalid { at: got, .. }) => assert_eq!(got, at, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            register_functions(&mut reg, "[1"),
            Err(MockError::NotJson(_))
        ));
    }

    const CONFIG: &str = r#"{
      "StateMachines": {"Sm": {"TestCases": {"Happy": {"Call": "Ok"}, "Flaky": {"Call": "FailTwice"}}}},
      "MockedResponses": {
        "Ok": {"0": {"Return": {"StatusCode": 200, "Payload": {"x": 1}}}},
        "FailTwice": {"0-1": {"Throw": {"Error": "Lambda.ServiceException", "Cause": "busy"}},
                      "2": {"Return": {"done": true}}}
      }}"#;

    #[test]
    fn mock_config_ranges_and_repeats() {
        let mocks = load_test_case(CONFIG, None, "Flaky").unwrap();
        let call = &mocks["Call"];
        assert!(
            matches!(call.answer(0), Some(MockedResult::Throw { error, .. }) if error == "Lambda.ServiceException")
        );
        assert!(matches!(call.answer(1), Some(MockedResult::Throw { .. })));
        assert_eq!(
            call.answer(2),
            Some(&MockedResult::Return(json!({"done": true})))
        );
        assert_eq!(
            call.answer(9),
            Some(&MockedResult::Return(json!({"done": true})))
        );
        assert!(load_test_case(CONFIG, Some("Sm"), "Happy").is_ok());
    }

    #[test]
    fn bad_mock_configs_are_refused() {
        assert!(matches!(
            load_test_case(CONFIG, None, "Nope"),
            Err(MockError::NotFound(_))
        ));
        assert!(matches!(
            load_test_case(CONFIG, Some("Other"), "Happy"),
            Err(MockError::NotFound(_))
        ));
        let gap = r#"{"StateMachines": {"S": {"TestCases": {"T": {"A": "R"}}}},
                      "MockedResponses": {"R": {"0": {"Return": 1}, "2": {"Return": 2}}}}"#;
        assert!(matches!(
            load_test_case(gap, None, "T"),
            Err(MockError::Invalid { .. })
        ));
        let both = r#"{"StateMachines": {"S": {"TestCases": {"T": {"A": "R"}}}},
                      "MockedResponses": {"R": {"0": {"Return": 1, "Throw": {"Error": "E"}}}}}"#;
        assert!(matches!(
            load_test_case(both, None, "T"),
            Err(MockError::Invalid { .. })
        ));
        let missing = r#"{"StateMachines": {"S": {"TestCases": {"T": {"A": "Nope"}}}}, "MockedResponses": {}}"#;
        assert!(matches!(
            load_test_case(missing, None, "T"),
            Err(MockError::Invalid { .. })
        ));
    }
}
