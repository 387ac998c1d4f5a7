"""Runs benchmark definitions through moto's Step Functions execution (the parser ported from
LocalStack, enabled with config stepfunctions.execute_state_machine) and prints one JSON line per
case: transitions per execution, executions, seconds, transitions/s.

Usage: python run_moto.py RUNS_PER_CASE DEFINITION.json...
Cases with Task states are skipped: moto would need a real Lambda (Docker) behind them.
"""

import json
import os
import sys
import time
import uuid

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/bench"


def has_task(definition):
    text = json.dumps(definition)
    return '"Type": "Task"' in text


def run_once(client, arn, payload):
    execution = client.start_execution(
        stateMachineArn=arn, name=str(uuid.uuid4()), input=payload
    )["executionArn"]
    while True:
        status = client.describe_execution(executionArn=execution)["status"]
        if status != "RUNNING":
            break
        time.sleep(0.001)
    if status != "SUCCEEDED":
        raise RuntimeError(f"execution ended {status}")
    return execution


@mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
def main():
    runs = int(sys.argv[1])
    client = boto3.client("stepfunctions")
    for path in sys.argv[2:]:
        name = os.path.basename(path)[: -len(".json")]
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        if has_task(case["definition"]):
            print(json.dumps({"engine": "moto", "case": name, "skipped": "needs a Lambda"}))
            continue
        arn = client.create_state_machine(
            name=name, definition=json.dumps(case["definition"]), roleArn=ROLE
        )["stateMachineArn"]
        payload = json.dumps(case["input"])
        first = run_once(client, arn, payload)
        events = client.get_execution_history(executionArn=first, maxResults=1000)
        transitions = 0
        while True:
            transitions += sum(1 for e in events["events"] if e["type"].endswith("StateEntered"))
            token = events.get("nextToken")
            if not token:
                break
            events = client.get_execution_history(
                executionArn=first, maxResults=1000, nextToken=token
            )
        start = time.perf_counter()
        for _ in range(runs):
            run_once(client, arn, payload)
        elapsed = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "engine": "moto",
                    "case": name,
                    "transitions": transitions,
                    "runs": runs,
                    "seconds": elapsed,
                    "transitions_per_second": transitions * runs / elapsed,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
