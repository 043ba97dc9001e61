"""Translates a SAM template into plain CloudFormation, offline: what the
AWS::Serverless-2016-10-31 transform does on deploy. Prints the JSON.

Usage: python scripts/sam-translate.py template.yaml [Param=Value ...]

Local CodeUri folders become placeholder S3 locations (sam deploy uploads
them); nothing is sent to AWS.
"""

import json
import os
import sys

import yaml
from samtranslator.public.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform

INTRINSICS = [
    "Base64", "Cidr", "Condition", "Equals", "FindInMap", "GetAZs", "GetAtt",
    "If", "ImportValue", "Join", "Not", "Or", "And", "Ref", "Select", "Split",
    "Sub",
]


class Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !Sub, ...)."""


def _tag(name):
    key = name if name in ("Ref", "Condition") else "Fn::" + name

    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if name == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {key: value}

    return construct


for _name in INTRINSICS:
    Loader.add_constructor("!" + _name, _tag(_name))


class NoManagedPolicies:
    """The roles are explicit: no AWS managed policy names to resolve."""

    def load(self):
        return {}


def main():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(sys.argv[1], encoding="utf-8") as f:
        template = yaml.load(f, Loader=Loader)
    parameters = dict(arg.split("=", 1) for arg in sys.argv[2:])
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(
            props.get("CodeUri"), str
        ):
            props["CodeUri"] = "s3://placeholder/" + props["CodeUri"].strip("/") + ".zip"
    try:
        output = transform(template, parameters, NoManagedPolicies())
    except InvalidDocumentException as e:
        sys.exit("SAM transform failed:\n" + "\n".join(str(c) for c in e.causes))
    json.dump(output, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
