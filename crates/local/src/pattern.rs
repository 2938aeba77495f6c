//! EventBridge event patterns, and the rules of the infra template that use them.
//!
//! Owns [`matches`] (the pattern language subset the template and common rules use: exact
//! values, nested objects, `$or`, `prefix`, `suffix`, `anything-but`, `exists`,
//! `equals-ignore-case`, `numeric`) and [`rules_from_template`], which reads every
//! `AWS::Events::Rule` of `infra/template.yaml` — `!Ref AWS::AccountId` resolved to the local
//! account — so the in-process bus routes events exactly as the deployed rules would. Pure: it
//! is given the template's text.

use serde_json::{Map, Value};

/// One EventBridge rule: its pattern and the logical ids of its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule's logical id in the template.
    pub name: String,
    /// `EventPattern`, as JSON.
    pub pattern: Value,
    /// Logical ids of the targets (`!GetAtt X.Arn` → `X`).
    pub targets: Vec<String>,
}

/// Why the template's rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Not YAML.
    #[error("infra template is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A rule has no usable `EventPattern`.
    #[error("infra template: rule {0} has no EventPattern")]
    NoPattern(String),
}

/// Whether `event` matches `pattern`.
pub fn matches(pattern: &Value, event: &Value) -> bool {
    let Some(p) = pattern.as_object() else {
        return false;
    };
    p.iter().all(|(key, want)| {
        if key == "$or" {
            return want
                .as_array()
                .is_some_and(|alts| alts.iter().any(|alt| matches(alt, event)));
        }
        let got = event.get(key);
        match want {
            Value::Object(_) => got.is_some_and(|g| g.is_object() && matches(want, g)),
            Value::Array(options) => field_matches(options, got),
            _ => false,
        }
    })
}

fn field_matches(options: &[Value], got: Option<&Value>) -> bool {
    let values: Vec<&Value> = match got {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    options.iter().any(|option| match option {
        Value::Object(op) => operator_matches(op, got, &values),
        exact => values.contains(&exact),
    })
}

fn operator_matches(op: &Map<String, Value>, got: Option<&Value>, values: &[&Value]) -> bool {
    let Some((name, arg)) = op.iter().next() else {
        return false;
    };
    let any_str = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| v.as_str().is_some_and(f));
    match name.as_str() {
        "exists" => arg.as_bool() == Some(got.is_some()),
        "prefix" => arg.as_str().is_some_and(|p| any_str(&|s| s.starts_with(p))),
        "suffix" => arg.as_str().is_some_and(|p| any_str(&|s| s.ends_with(p))),
        "equals-ignore-case" => arg
            .as_str()
            .is_some_and(|p| any_str(&|s| s.eq_ignore_ascii_case(p))),
        "anything-but" => {
            let excluded: Vec<&Value> = match arg {
                Value::Array(a) => a.iter().collect(),
                Value::Object(inner) => {
                    return got.is_some() && !operator_matches(inner, got, values)
                }
                v => vec![v],
            };
            got.is_some() && values.iter().all(|v| !excluded.contains(v))
        }
        "numeric" => arg.as_array().is_some_and(|conds| {
            values.iter().any(|v| {
                let Some(x) = v.as_f64() else { return false };
                conds.chunks(2).all(|c| {
                    match (
                        c.first().and_then(Value::as_str),
                        c.get(1).and_then(Value::as_f64),
                    ) {
                        (Some("="), Some(y)) => x == y,
                        (Some("<"), Some(y)) => x < y,
                        (Some("<="), Some(y)) => x <= y,
                        (Some(">"), Some(y)) => x > y,
                        (Some(">="), Some(y)) => x >= y,
                        _ => false,
                    }
                })
            })
        }),
        _ => false,
    }
}

/// YAML (with CloudFormation tags) → JSON, resolving `!Ref AWS::AccountId` to `account`.
fn to_json(v: &serde_yaml::Value, account: &str) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(|i| to_json(i, account)).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), to_json(v, account))))
                .collect(),
        ),
        Y::Tagged(t) => {
            let inner = to_json(&t.value, account);
            if t.tag == "Ref" && inner == "AWS::AccountId" {
                Value::String(account.to_owned())
            } else {
                inner
            }
        }
    }
}

/// Every `AWS::Events::Rule` of the template, in document order.
pub fn rules_from_template(yaml: &str, account: &str) -> Result<Vec<Rule>, TemplateError> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml)?;
    let mut rules = Vec::new();
    let Some(resources) = doc.get("Resources").and_then(|r| r.as_mapping()) else {
        return Ok(rules);
    };
    for (name, resource) in resources {
        let name = name.as_str().unwrap_or_default().to_owned();
        if resource.get("Type").and_then(|t| t.as_str()) != Some("AWS::Events::Rule") {
            continue;
        }
        let props = resource.get("Properties");
        let pattern = props
            .and_then(|p| p.get("EventPattern"))
            .map(|p| to_json(p, account))
            .filter(Value::is_object)
            .ok_or_else(|| TemplateError::NoPattern(name.clone()))?;
        let targets = props
            .and_then(|p| p.get("Targets"))
            .and_then(|t| t.as_sequence())
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| {
                        let arn = to_json(t.get("Arn")?, account);
                        let arn = arn.as_str()?;
                        Some(arn.trim_end_matches(".Arn").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        rules.push(Rule {
            name,
            pattern,
            targets,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TEMPLATE: &str = include_str!("../../../infra/template.yaml");

    fn event(status: &str, secondary: &str) -> Value {
        json!({"source": "aws.sagemaker", "detail-type": "SageMaker Training Job State Change",
               "account": "000000000000",
               "detail": {"TrainingJobStatus": status, "SecondaryStatus": secondary}})
    }

    #[test]
    fn the_templates_sagemaker_rule_routes_what_the_handler_needs() {
        let rules = rules_from_template(TEMPLATE, "000000000000").unwrap();
        let rule = rules
            .iter()
            .find(|r| r.targets.iter().any(|t| t == "SageMakerEventsFunction"))
            .expect("a rule targets the sagemaker-events function");
        let table = [
            ("Completed", "Completed", true),
            ("Failed", "Failed", true),
            ("Stopped", "MaxWaitTimeExceeded", true),
            ("Stopped", "Stopped", true),
            ("Stopped", "MaxRuntimeExceeded", true),
            ("InProgress", "Interrupted", true),
            ("InProgress", "Training", false),
            ("InProgress", "Starting", false),
            ("Stopping", "Stopping", false),
        ];
        for (status, secondary, expected) in table {
            assert_eq!(
                matches(&rule.pattern, &event(status, secondary)),
                expected,
                "{status}/{secondary}"
            );
        }
        let mut other_account = event("Completed", "Completed");
        other_account["account"] = json!("111111111111");
        assert!(!matches(&rule.pattern, &other_account));
    }

    #[test]
    fn operators() {
        let e = json!({"source": "a.b", "n": 5, "tags": ["x", "y"], "d": {"k": "Value"}});
        let table = [
            (json!({"source": [{"prefix": "a."}]}), true),
            (json!({"source": [{"suffix": ".c"}]}), false),
            (json!({"source": [{"anything-but": ["a.b"]}]}), false),
            (json!({"source": [{"anything-but": {"prefix": "z"}}]}), true),
            (json!({"missing": [{"exists": false}]}), true),
            (json!({"source": [{"exists": false}]}), false),
            (json!({"n": [{"numeric": [">", 1, "<=", 5]}]}), true),
            (json!({"n": [{"numeric": ["<", 5]}]}), false),
            (json!({"tags": ["y"]}), true),
            (json!({"d": {"k": [{"equals-ignore-case": "value"}]}}), true),
            (json!({"d": {"k": ["other"]}}), false),
            (json!({"$or": [{"n": [1]}, {"n": [5]}]}), true),
            (json!({"missing": ["x"]}), false),
        ];
        for (pattern, expected) in table {
            assert_eq!(matches(&pattern, &e), expected, "{pattern}");
        }
    }
}
