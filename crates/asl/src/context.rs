//! The context object (`$$`) as a borrowed view: the execution part (which holds the whole
//! execution input) is shared by every state of an execution, and the per-state parts
//! (`State`, `Map.Item`, `Task.Token`) are built only when a path reads them. So a state's
//! cost does not grow with the execution input, however large it is.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// The variables in scope (`Assign`).
pub(crate) type Vars = Map<String, Value>;

/// What `$$` and `$name` paths read while one state runs.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// `{"Execution": {...}, "StateMachine": {...}}`, shared by the whole execution.
    pub(crate) base: &'a Value,
    /// `$$.State.Name`.
    pub(crate) state: &'a str,
    /// `$$.State.EnteredTime` (formatted only when read).
    pub(crate) entered: DateTime<Utc>,
    /// `$$.State.RetryCount` (Task states only).
    pub(crate) retry_count: Option<u32>,
    /// `$$.Map.Item.Index` and `.Value` (a Map's ItemSelector only).
    pub(crate) item: Option<(usize, &'a Value)>,
    /// `$$.Task.Token` (`.waitForTaskToken` tasks only).
    pub(crate) task_token: Option<&'a str>,
    /// The variables in scope.
    pub(crate) vars: &'a Vars,
    /// JSONata `$states.result` (Output and Assign of Task, Map, Parallel).
    pub(crate) states_result: Option<&'a Value>,
    /// JSONata `$states.errorOutput` (a Catcher's Output and Assign).
    pub(crate) states_error: Option<&'a Value>,
}

impl<'a> Ctx<'a> {
    /// A copy reading a different retry count.
    pub(crate) fn with_retry(self, retry_count: u32) -> Self {
        Self {
            retry_count: Some(retry_count),
            ..self
        }
    }

    /// A copy for one Map item's ItemSelector.
    pub(crate) fn with_item(self, index: usize, value: &'a Value) -> Self {
        Self {
            item: Some((index, value)),
            ..self
        }
    }

    /// The value of variable `name`, if assigned.
    pub(crate) fn variable(&self, name: &str) -> Option<&'a Value> {
        self.vars.get(name)
    }

    /// The per-state top-level fields, built on demand.
    pub(crate) fn built_field(&self, key: &str) -> Option<Value> {
        match key {
            "State" => {
                let mut st = Map::new();
                st.insert("Name".into(), Value::String(self.state.into()));
                st.insert(
                    "EnteredTime".into(),
                    Value::String(self.entered.to_rfc3339_opts(SecondsFormat::Millis, true)),
                );
                if let Some(r) = self.retry_count {
                    st.insert("RetryCount".into(), Value::from(r));
                }
                Some(Value::Object(st))
            }
            "Map" => self
                .item
                .map(|(i, v)| json!({"Item": {"Index": i, "Value": v}})),
            "Task" => self.task_token.map(|t| json!({"Token": t})),
            _ => None,
        }
    }

    /// A top-level field: shared ones by reference, per-state ones built.
    pub(crate) fn field(&self, key: &str) -> Option<std::borrow::Cow<'a, Value>> {
        match key {
            "State" | "Map" | "Task" => self.built_field(key).map(std::borrow::Cow::Owned),
            _ => self.base.get(key).map(std::borrow::Cow::Borrowed),
        }
    }

    /// The whole context object, for `$$` itself or a path that scans its top level.
    pub(crate) fn materialize(&self) -> Value {
        let mut m = match self.base {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        for key in ["State", "Map", "Task"] {
            if let Some(v) = self.built_field(key) {
                m.insert(key.into(), v);
            }
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn builds_only_what_is_present() {
        let base = json!({"Execution": {"Input": {"big": [1, 2, 3]}}});
        let vars = Vars::new();
        let ctx = Ctx {
            base: &base,
            state: "S",
            entered: Utc::now(),
            retry_count: None,
            item: None,
            task_token: None,
            vars: &vars,
            states_result: None,
            states_error: None,
        };
        assert_eq!(ctx.built_field("Map"), None);
        assert_eq!(ctx.built_field("Task"), None);
        assert_eq!(
            ctx.with_retry(2).built_field("State").unwrap()["RetryCount"],
            json!(2)
        );
        let item = json!("x");
        let all = Ctx {
            task_token: Some("tok"),
            ..ctx.with_item(3, &item)
        }
        .materialize();
        assert_eq!(all["Map"]["Item"], json!({"Index": 3, "Value": "x"}));
        assert_eq!(all["Task"]["Token"], json!("tok"));
        assert_eq!(all["Execution"]["Input"]["big"], json!([1, 2, 3]));
        assert!(ctx.field("Nothing").is_none());
    }
}
