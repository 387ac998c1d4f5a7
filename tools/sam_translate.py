#!/usr/bin/env python3
"""Transforms infra/template.yaml (AWS SAM) to plain CloudFormation with aws-sam-translator and,
given an emulator endpoint, deploys it there as a stack (CreateStack through boto3).

What `sam package` would do first is done here against the emulator: the function and layer
zips are put in an artifacts bucket and the local CodeUri/ContentUri become S3 locations; the
state machine definitions are inlined (Definition), so the translator writes them into the
template with their DefinitionSubstitutions. The functions' code is a stand-in zip (a
`bootstrap` that exits): the emulator does not run provided.al2023 code, and the stack test is
about the resources, not the code (functions/*/tests/runtime_loop.rs run the real binaries).

Prints one JSON object on stdout: the stack status and reason, each resource with its type,
physical id and status, the resource types the emulator's CloudFormation does not create
(`unsupported`), and the stack outputs. Exit status 0 when the transform (and the deploy, if
asked) ran, whatever the stack's final status: the caller asserts on it.

Usage:
  sam_translate.py TEMPLATE [--out FILE]
  sam_translate.py TEMPLATE --endpoint URL --stack NAME [--parameter KEY=VALUE ...]
"""

import argparse
import copy
import io
import json
import os
import sys
import time
import zipfile

import boto3
from samtranslator.public.translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

REGION = "us-east-1"
ARTIFACTS_BUCKET = "fhir-unify-sam-artifacts"

# The translator fills AWS::Region and AWS::Partition from the default boto3 session.
os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def stand_in_zip():
    """A zip holding an executable `bootstrap` that exits (the code is not run)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (0o100755) << 16
        z.writestr(info, "#!/bin/sh\nexit 0\n")
    return buffer.getvalue()


def package(template, template_dir, s3):
    """What `sam package` does, against the emulator: code to S3, definitions inlined."""
    template = copy.deepcopy(template)
    if s3 is not None:
        s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
    body = stand_in_zip()
    for logical_id, resource in template.get("Resources", {}).items():
        properties = resource.get("Properties", {})
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function" and isinstance(properties.get("CodeUri"), str):
            key = f"{logical_id}/bootstrap.zip"
            if s3 is not None:
                s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=body)
            properties["CodeUri"] = f"s3://{ARTIFACTS_BUCKET}/{key}"
        elif kind == "AWS::Serverless::LayerVersion" and isinstance(
            properties.get("ContentUri"), str
        ):
            key = f"{logical_id}/layer.zip"
            if s3 is not None:
                s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=body)
            properties["ContentUri"] = f"s3://{ARTIFACTS_BUCKET}/{key}"
        elif kind == "AWS::Serverless::StateMachine" and isinstance(
            properties.get("DefinitionUri"), str
        ):
            path = os.path.normpath(os.path.join(template_dir, properties.pop("DefinitionUri")))
            with open(path, encoding="utf-8") as f:
                properties["Definition"] = json.load(f)
    return template


def client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def unsupported_types(cfn):
    """Resource types of the transformed template that moto's CloudFormation does not create
    (it skips them with a warning and still completes the stack)."""
    from moto.cloudformation.parsing import resource_class_from_type

    kinds = {r["Type"] for r in cfn.get("Resources", {}).values()}
    return sorted(k for k in kinds if resource_class_from_type(k) is None)


def adapt_for_moto(cfn):
    """Changes that work around the emulator's CloudFormation, not AWS's; each is reported.
    The template stays as AWS wants it (cfn-lint checks that)."""
    cfn = copy.deepcopy(cfn)
    notes = []
    for logical_id, resource in cfn.get("Resources", {}).items():
        properties = resource.get("Properties", {})
        # moto 5.2.5 parses an archive's EventPattern with json.loads only (a JSON object,
        # as CloudFormation takes it, fails with a TypeError): give it the same as a string.
        if resource["Type"] == "AWS::Events::Archive" and isinstance(
            properties.get("EventPattern"), dict
        ):
            properties["EventPattern"] = json.dumps(properties["EventPattern"])
            notes.append(f"{logical_id}: EventPattern passed as a JSON string")
    return cfn, notes


def deploy(cfn, endpoint, stack, parameters):
    cloudformation = client("cloudformation", endpoint)
    cloudformation.create_stack(
        StackName=stack,
        TemplateBody=json.dumps(cfn),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.time() + 120
    while True:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        if not described["StackStatus"].endswith("_IN_PROGRESS") or time.time() > deadline:
            break
        time.sleep(0.5)
    resources = []
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
        resources.extend(page["StackResourceSummaries"])
    unsupported = set(unsupported_types(cfn))
    return {
        "status": described["StackStatus"],
        "reason": described.get("StackStatusReason"),
        "outputs": {o["OutputKey"]: o.get("OutputValue") for o in described.get("Outputs", [])},
        "resources": {
            r["LogicalResourceId"]: {
                "type": r["ResourceType"],
                "physical": r.get("PhysicalResourceId"),
                "status": r["ResourceStatus"],
                # moto lists a resource it skipped as CREATE_COMPLETE too: say which are real.
                "createdByEmulator": r["ResourceType"] not in unsupported,
            }
            for r in resources
            # moto lists the resources it skipped without a logical id.
            if r.get("LogicalResourceId")
        },
        "notCreated": sorted(
            logical_id
            for logical_id, r in cfn.get("Resources", {}).items()
            if r["Type"] in unsupported
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template")
    parser.add_argument("--out", help="write the transformed template (JSON) here")
    parser.add_argument("--endpoint", help="deploy to this emulator (moto server URL)")
    parser.add_argument("--stack", default="fhir-unify")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    parameters = {}
    for p in args.parameter:
        key, sep, value = p.partition("=")
        if not sep or not key:
            parser.error(f"--parameter {p!r}: expected KEY=VALUE")
        parameters[key] = value

    with open(args.template, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    s3 = client("s3", args.endpoint) if args.endpoint else None
    packaged = package(template, os.path.dirname(os.path.abspath(args.template)), s3)
    iam = client("iam", args.endpoint) if args.endpoint else boto3.client("iam", region_name=REGION)
    cfn = transform(packaged, dict(parameters), ManagedPolicyLoader(iam))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(cfn, f, indent=1, sort_keys=True)

    result = {
        "transformedResources": {k: v["Type"] for k, v in cfn.get("Resources", {}).items()},
        "unsupported": unsupported_types(cfn),
    }
    if args.endpoint:
        adapted, result["adaptedForEmulator"] = adapt_for_moto(cfn)
        result.update(deploy(adapted, args.endpoint, args.stack, parameters))
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
