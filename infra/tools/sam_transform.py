"""Runs the AWS SAM transform offline: SAM template in, plain CloudFormation JSON out.

    python infra/tools/sam_transform.py infra/template.yaml OUT.json

cfn-lint and checkov read SAM resources as they are written; what CloudFormation actually
deploys is the transform's output (AWS::Lambda::Function with its Runtime, EventInvokeConfig,
permissions ...). Linting that output too catches mistakes only visible after the transform.

Local CodeUri folders are replaced by an s3:// placeholder first (the translator accepts only
S3 locations; `sam package` does the same with real ones). Managed policies are not looked up
(that needs IAM): the template names none, and any it did name would fail loudly here. Resource
Metadata is passed through, so checkov skip annotations follow the function to its output.
Needs aws-sam-translator (scripts/python-tools.sh installs it into .venv-tools).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from samtranslator.public.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

PLACEHOLDER_BUCKET = "spotcheck-sam-transform-placeholder"


class NoManagedPolicies:
    """Managed-policy loader that refuses lookups (offline)."""

    def load(self) -> dict[str, str]:
        return {}


def replace_local_code(template: dict[str, Any]) -> None:
    """Points every local CodeUri at a placeholder object in S3."""
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.setdefault("Properties", {})
        code = props.get("CodeUri")
        if code is None or (isinstance(code, str) and not code.startswith("s3://")):
            props["CodeUri"] = f"s3://{PLACEHOLDER_BUCKET}/{name}.zip"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} TEMPLATE.yaml OUT.json", file=sys.stderr)
        return 2
    src, out = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    replace_local_code(template)
    # The translator builds ARNs for the region it runs in.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        output = transform(template, {}, NoManagedPolicies(), passthrough_metadata=True)
    except InvalidDocumentException as err:
        for cause in err.causes:
            print(f"{src}: SAM transform: {cause.message}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(output, f, indent=2, sort_keys=False)
        f.write("\n")
    kinds: dict[str, int] = {}
    for resource in output.get("Resources", {}).values():
        kinds[resource["Type"]] = kinds.get(resource["Type"], 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(kinds.items()))
    print(f"{src} -> {out}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
