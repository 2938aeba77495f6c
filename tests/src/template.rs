//! The EventBridge rules of `infra/template.yaml`, read from the template itself.
//!
//! Owns turning each `AWS::Events::Rule`'s `EventPattern` into the JSON EventBridge gets,
//! resolving `!Ref AWS::AccountId` (the only intrinsic a pattern may use; any other one fails
//! loudly), and naming each rule's targets (`!GetAtt X.Arn` → `X`). CloudFormation's short
//! tags (`!Ref`, `!Sub`, `!GetAtt`, `!If`, …) parse as YAML tagged values, so the whole
//! template is read as it is; nothing here knows what the patterns say.

use serde_json::{Map, Value};
use serde_yaml::Value as Y;

/// The template, as the tests were built with it.
pub const TEMPLATE: &str = include_str!("../../infra/template.yaml");

/// Logical id of the sagemaker-events function.
pub const SAGEMAKER_FUNCTION: &str = "SageMakerEventsFunction";
/// Logical id of the ec2-spot-events function.
pub const EC2_FUNCTION: &str = "Ec2SpotEventsFunction";

/// One rule of the template.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateRule {
    /// Logical id.
    pub logical_id: String,
    /// `EventPattern` as EventBridge JSON, the account resolved.
    pub pattern: Value,
    /// Logical ids of the targets.
    pub targets: Vec<String>,
}

impl TemplateRule {
    /// Whether the rule targets `function` (a logical id).
    pub fn targets(&self, function: &str) -> bool {
        self.targets.iter().any(|t| t == function)
    }
}

fn to_json(v: &Y, account: &str, path: &str) -> Result<Value, String> {
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => serde_json::to_value(n).map_err(|e| format!("{path}: {e}"))?,
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, account, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, item) in m {
                let k = k
                    .as_str()
                    .ok_or_else(|| format!("{path}: a key is not a string"))?;
                out.insert(
                    k.to_owned(),
                    to_json(item, account, &format!("{path}.{k}"))?,
                );
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            let inner = to_json(&t.value, account, path)?;
            if t.tag == "Ref" && inner == "AWS::AccountId" {
                Value::String(account.to_owned())
            } else if t.tag == "GetAtt" {
                inner
            } else {
                return Err(format!(
                    "{path}: intrinsic {} {inner} cannot be resolved for an event pattern",
                    t.tag
                ));
            }
        }
    })
}

/// Every `AWS::Events::Rule` of the template, in document order, with `!Ref AWS::AccountId`
/// resolved to `account`.
pub fn rules(account: &str) -> Vec<TemplateRule> {
    let doc: Y = serde_yaml::from_str(TEMPLATE).expect("infra/template.yaml parses as YAML");
    let resources = doc
        .get("Resources")
        .and_then(Y::as_mapping)
        .expect("the template has Resources");
    let mut out = Vec::new();
    for (id, resource) in resources {
        if resource.get("Type").and_then(Y::as_str) != Some("AWS::Events::Rule") {
            continue;
        }
        let id = id.as_str().unwrap_or_default().to_owned();
        let props = resource.get("Properties");
        let pattern = props
            .and_then(|p| p.get("EventPattern"))
            .map(|p| to_json(p, account, &format!("{id}.EventPattern")))
            .unwrap_or_else(|| Err(format!("{id} has no EventPattern")))
            .unwrap_or_else(|e| panic!("infra/template.yaml: {e}"));
        let targets = props
            .and_then(|p| p.get("Targets"))
            .and_then(Y::as_sequence)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| {
                        let arn = to_json(t.get("Arn")?, account, &id).ok()?;
                        Some(arn.as_str()?.trim_end_matches(".Arn").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(TemplateRule {
            logical_id: id,
            pattern,
            targets,
        });
    }
    out
}

/// The rule targeting `function`; panics unless exactly one does.
pub fn rule_for(account: &str, function: &str) -> TemplateRule {
    let matching: Vec<TemplateRule> = rules(account)
        .into_iter()
        .filter(|r| r.targets(function))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one rule of infra/template.yaml targets {function}: {matching:?}"
    );
    matching
        .into_iter()
        .next()
        .unwrap_or_else(|| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_rules_parse_with_the_account_resolved() {
        let rules = rules("111122223333");
        assert_eq!(rules.len(), 2, "{rules:?}");
        let sm = rule_for("111122223333", SAGEMAKER_FUNCTION);
        assert_eq!(sm.pattern["account"], serde_json::json!(["111122223333"]));
        assert_eq!(sm.pattern["source"], serde_json::json!(["aws.sagemaker"]));
        let ec2 = rule_for("111122223333", EC2_FUNCTION);
        assert_eq!(ec2.pattern["source"], serde_json::json!(["aws.ec2"]));
    }

    #[test]
    fn other_intrinsics_in_a_pattern_are_refused() {
        let y: Y = serde_yaml::from_str("source: [!Sub '${AWS::Region}']").expect("YAML");
        assert!(to_json(&y, "1", "p").is_err());
    }
}
