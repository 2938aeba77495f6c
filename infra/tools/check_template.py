"""Project-specific checks of infra/template.yaml that generic linters cannot make.

    python infra/tools/check_template.py [infra/template.yaml]

1. The policy environment variables are exactly those crates/control/src/policy.rs reads
   (its SETTINGS table), so a rename on either side fails CI instead of silently dropping a
   setting. Skipped with a notice while policy.rs does not exist.
2. No IAM Allow statement grants an action with a wildcard; Resource "*" appears only for the
   actions that support no resource-level permissions (listed below).
3. Each function is a Rust cargo-lambda build of an existing workspace member whose package
   name is the BuildProperties Binary, on provided.al2023 / arm64 / bootstrap.
4. Every EventBridge rule target has a retry policy and a dead-letter queue.
5. Every IAM statement of the two function roles is one the code needs: GRANTS below lists
   each role's statements (by Sid) with their actions and the SDK calls (in crates/aws/src,
   crates/control/src and functions/) that need them. A statement or action the table does not
   list fails, and so does a listed SDK call the code no longer makes: removing a call from the
   code makes its grant fail here until the grant is removed too.
6. The dashboard's body is JSON once its ${...} references are substituted; each reference
   names a parameter, a resource (or one of its attributes) or a pseudo parameter; every
   Spotcheck metric it plots is one crates/control/src/outputs.rs emits; its log queries read
   only the stack's log groups, filtered to the handlers' decision lines; its alarm widget
   lists every alarm of the template; widgets fit the 24-column grid.

Exits 1 listing every violation. Needs PyYAML (any of the tool venvs has it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from typing import Any

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POLICY_RS = os.path.join(ROOT, "crates", "control", "src", "policy.rs")
OUTPUTS_RS = os.path.join(ROOT, "crates", "control", "src", "outputs.rs")
PSEUDO_PARAMETERS = {"AWS::Region", "AWS::StackName", "AWS::AccountId", "AWS::Partition", "AWS::URLSuffix"}
# Variables the template sets that are not policy settings (owned by the Lambdas' shells).
NON_POLICY_VARS = {
    "SPOTCHECK_LEDGER_BUCKET",
    "SPOTCHECK_LEDGER_PREFIX",
    "SPOTCHECK_PRICE_TABLE",
    "SPOTCHECK_CHECKPOINT_BUCKET",
    "SPOTCHECK_CHECKPOINT_PREFIX",
}
# Actions that support no resource-level permissions (Service Authorization Reference).
STAR_RESOURCE_OK = {"ec2:DescribeTags"}
SOURCE_DIRS = [os.path.join(ROOT, d) for d in ("crates/aws/src", "crates/control/src", "functions")]

# What each role's statements grant and the SDK calls (snake_case operation names as the Rust
# SDK spells them) or duties of the Lambda runtime that need them.
LOGS = ["logs:CreateLogStream", "logs:PutLogEvents"]
RUNTIME = "runtime"
COMMON = {
    "WriteOwnLogs": (LOGS, [RUNTIME]),  # the function's log lines, written by Lambda
    "DeadLetterOwnQueue": (["sqs:SendMessage"], [RUNTIME]),  # Lambda's async DLQ delivery
    "ListCheckpointPrefix": (["s3:ListBucket"], ["list_objects_v2"]),
    # ranged GET of manifests, stream-hash fallback; HeadObject is authorized as s3:GetObject
    "ReadCheckpoints": (["s3:GetObject"], ["get_object", "head_object"]),
    "DecryptCheckpointsViaS3": (["kms:Decrypt"], ["get_object"]),
    # PutObject If-None-Match, HeadObject after a 412
    "ReadWriteLedgerRecords": (["s3:GetObject", "s3:PutObject"], ["put_object", "head_object"]),
    "PublishSpotcheckEvents": (["events:PutEvents"], ["put_events"]),
    "PassTrainingRolesToSageMaker": (["iam:PassRole"], ["create_training_job"]),
    "DescribeOptedInTrainingJobs": (["sagemaker:DescribeTrainingJob"], ["describe_training_job"]),
    "ReadTrainingJobTags": (["sagemaker:ListTags"], ["list_tags"]),
}
GRANTS = {
    "SageMakerEventsRole": {
        **COMMON,
        "CreateOptedInTrainingJobs": (["sagemaker:CreateTrainingJob"], ["create_training_job"]),
        # CreateTrainingJob's Tags are authorized as sagemaker:AddTags (tag-on-create only)
        "TagOnCreateTrainingJob": (["sagemaker:AddTags"], ["create_training_job"]),
        "ReadPriceTable": (["s3:GetObject"], ["get_object"]),
    },
    "Ec2SpotEventsRole": {
        **COMMON,
        "DescribeInstanceTagsInRegion": (["ec2:DescribeTags"], ["describe_tags"]),
        "ReadContinuationTemplates": (["s3:GetObject"], ["get_object"]),
        "CreateContinuationTrainingJobs": (["sagemaker:CreateTrainingJob"], ["create_training_job"]),
        "TagOnCreateContinuationTrainingJob": (["sagemaker:AddTags"], ["create_training_job"]),
    },
}


class CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps CloudFormation short-form tags as {"Fn::X": value}."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def policy_env_names() -> set[str] | None:
    if not os.path.exists(POLICY_RS):
        return None
    text = open(POLICY_RS, encoding="utf-8").read()
    block = re.search(r"const SETTINGS[^=]*=\s*\[(.*?)\];", text, re.S)
    source = block.group(1) if block else text
    return set(re.findall(r'"(SPOTCHECK_[A-Z0-9_]+)"', source))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(document: Any) -> list[dict[str, Any]]:
    """Statements of a policy document, looking through Fn::If branches."""
    found: list[dict[str, Any]] = []
    for stmt in as_list(document.get("Statement", [])):
        if isinstance(stmt, dict) and "Fn::If" in stmt:
            for branch in stmt["Fn::If"][1:]:
                if isinstance(branch, dict) and "Effect" in branch:
                    found.append(branch)
        elif isinstance(stmt, dict):
            found.append(stmt)
    return found


def check(path: str) -> list[str]:
    errors: list[str] = []
    template = load_template(path)
    resources: dict[str, Any] = template["Resources"]
    env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})

    # 1. policy variables
    expected = policy_env_names()
    if expected is None:
        print(f"notice: {POLICY_RS} not found; policy variable names not cross-checked")
    else:
        have = {k for k in env if k not in NON_POLICY_VARS}
        for name in sorted(expected - have):
            errors.append(f"policy.rs reads {name}, the template does not set it")
        for name in sorted(have - expected):
            errors.append(f"the template sets {name}, policy.rs does not read it")

    # 2. IAM
    for name, res in resources.items():
        docs: list[Any] = []
        if res["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in res["Properties"].get("Policies", [])]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs = [res["Properties"]["PolicyDocument"]]
        for doc in docs:
            for stmt in statements(doc):
                if stmt.get("Effect") != "Allow":
                    continue
                actions = as_list(stmt.get("Action", []))
                sid = stmt.get("Sid", "?")
                for action in actions:
                    if "*" in str(action):
                        errors.append(f"{name}/{sid}: wildcard action {action}")
                if "*" in as_list(stmt.get("Resource", [])):
                    bad = [a for a in actions if a not in STAR_RESOURCE_OK]
                    if bad:
                        errors.append(f"{name}/{sid}: Resource '*' for {bad}")

    # 3. functions
    workspace = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))
    members = set(workspace.get("workspace", {}).get("members", []))
    globals_fn = template.get("Globals", {}).get("Function", {})
    for name, res in resources.items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        props = {**globals_fn, **res.get("Properties", {})}
        meta = res.get("Metadata", {})
        for key, want in (("Runtime", "provided.al2023"), ("Handler", "bootstrap"), ("Architectures", ["arm64"])):
            if props.get(key) != want:
                errors.append(f"{name}: {key} is {props.get(key)!r}, expected {want!r}")
        if meta.get("BuildMethod") != "rust-cargolambda":
            errors.append(f"{name}: Metadata.BuildMethod must be rust-cargolambda")
        binary = meta.get("BuildProperties", {}).get("Binary")
        code = props.get("CodeUri", "")
        crate_dir = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), code))
        rel = os.path.relpath(crate_dir, ROOT)
        manifest = os.path.join(crate_dir, "Cargo.toml")
        if rel not in members:
            errors.append(f"{name}: CodeUri {code} ({rel}) is not a workspace member")
        if not os.path.exists(manifest):
            errors.append(f"{name}: {manifest} does not exist")
        else:
            package = tomllib.load(open(manifest, "rb")).get("package", {}).get("name")
            if package != binary:
                errors.append(f"{name}: Binary {binary!r} but {rel}/Cargo.toml builds {package!r}")

    # 5. every grant needed by a call the code makes
    source = ""
    for directory in SOURCE_DIRS:
        for dirpath, _, files in os.walk(directory):
            for file in files:
                if file.endswith(".rs"):
                    source += open(os.path.join(dirpath, file), encoding="utf-8").read()
    for role, grants in GRANTS.items():
        res = resources.get(role)
        if res is None:
            errors.append(f"{role}: no such resource")
            continue
        found: dict[str, list[str]] = {}
        for policy in res["Properties"].get("Policies", []):
            for stmt in statements(policy["PolicyDocument"]):
                if stmt.get("Effect") == "Allow":
                    found[stmt.get("Sid", "?")] = sorted(as_list(stmt.get("Action", [])))
        for sid, actions in sorted(found.items()):
            if sid not in grants:
                errors.append(f"{role}/{sid}: grants {actions}, which no call of the code needs")
            elif actions != sorted(grants[sid][0]):
                errors.append(f"{role}/{sid}: grants {actions}, the code needs {sorted(grants[sid][0])}")
        for sid, (_, calls) in sorted(grants.items()):
            for call in calls:
                if call != RUNTIME and not re.search(rf"\b{call}\b", source):
                    errors.append(f"{role}/{sid}: justified by {call}, which the code no longer calls")

    # 4. rule targets
    for name, res in resources.items():
        if res["Type"] != "AWS::Events::Rule":
            continue
        for target in res["Properties"].get("Targets", []):
            for key in ("RetryPolicy", "DeadLetterConfig"):
                if key not in target:
                    errors.append(f"{name}/{target.get('Id')}: no {key}")

    # 6. dashboards
    errors.extend(check_dashboards(template))
    return errors


def emitted_metrics() -> set[str]:
    """Metric names the EMF lines of crates/control/src/outputs.rs declare."""
    text = open(OUTPUTS_RS, encoding="utf-8").read()
    return set(re.findall(r'"Name":\s*"([A-Za-z]+)"', text))


def check_dashboards(template: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    resources: dict[str, Any] = template["Resources"]
    parameters = set(template.get("Parameters", {}))
    alarms = {name for name, res in resources.items() if res["Type"] == "AWS::CloudWatch::Alarm"}
    log_groups = {name for name, res in resources.items() if res["Type"] == "AWS::Logs::LogGroup"}
    metrics = emitted_metrics()
    for name, res in resources.items():
        if res["Type"] != "AWS::CloudWatch::Dashboard":
            continue
        body = res["Properties"].get("DashboardBody")
        if not (isinstance(body, dict) and isinstance(body.get("Fn::Sub"), str)):
            errors.append(f"{name}: DashboardBody must be a !Sub string of JSON")
            continue
        text = body["Fn::Sub"]
        refs = re.findall(r"\$\{([^}]*)\}", text)
        for ref in refs:
            base = ref.split(".", 1)[0]
            if ref not in PSEUDO_PARAMETERS and base not in resources and base not in parameters:
                errors.append(f"{name}: ${{{ref}}} names nothing in the template")
        try:
            dashboard = json.loads(re.sub(r"\$\{([^}]*)\}", lambda m: "REF_" + m.group(1), text))
        except json.JSONDecodeError as e:
            errors.append(f"{name}: DashboardBody is not JSON: {e}")
            continue
        listed_alarms: set[str] = set()
        for i, widget in enumerate(dashboard.get("widgets", [])):
            where = f"{name} widget {i} ({widget.get('properties', {}).get('title', widget.get('type'))})"
            x, width = widget.get("x", 0), widget.get("width", 6)
            if x < 0 or x + width > 24:
                errors.append(f"{where}: x {x} + width {width} leaves the 24-column grid")
            props = widget.get("properties", {})
            kind = widget.get("type")
            if kind in ("metric", "log") and "region" not in props:
                errors.append(f"{where}: no region")
            if kind == "metric":
                for metric in props.get("metrics", []):
                    if metric[0] == "Spotcheck" and metric[1] not in metrics:
                        errors.append(f"{where}: Spotcheck/{metric[1]} is not emitted by outputs.rs ({sorted(metrics)})")
            elif kind == "log":
                query = props.get("query", "")
                sources = re.findall(r"SOURCE '([^']*)'", query)
                if not sources:
                    errors.append(f"{where}: the query names no SOURCE")
                for source in sources:
                    if not (source.startswith("REF_") and source[4:] in log_groups):
                        errors.append(f"{where}: SOURCE {source!r} is not a log group of the stack")
                if "spotcheck = 'decision'" not in query:
                    errors.append(f"{where}: the query must keep to the decision lines (spotcheck = 'decision')")
            elif kind == "alarm":
                for arn in props.get("alarms", []):
                    alarm = arn.removeprefix("REF_").removesuffix(".Arn")
                    if alarm not in alarms:
                        errors.append(f"{where}: {arn} is not an alarm of the template")
                    listed_alarms.add(alarm)
        for alarm in sorted(alarms - listed_alarms):
            errors.append(f"{name}: alarm {alarm} is not on the dashboard")
    return errors


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else os.path.join(ROOT, "infra", "template.yaml")
    errors = check(path)
    for error in errors:
        print(f"{path}: {error}", file=sys.stderr)
    if not errors:
        print(f"{path}: project checks passed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
