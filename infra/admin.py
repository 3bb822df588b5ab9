"""Administration of a deployed qgjob stack.

    python -m infra.admin create-token --kind org --org-id acme [--stack-name qgjob]
    python -m infra.admin create-token --kind agent --tokens-table qgjob-TokensTable-ABC123
    python -m infra.admin create-token --kind agent --target device --org-id acme

An agent (fleet) token may only register device agents; each registration gets its own
credential for everything else. --target limits a fleet token to one device pool;
--org-id makes it a private lab's: its agents run only that org's jobs.

The tokens table is read from the CloudFormation stack's TokensTableName output unless
given. The token is printed once: only its hash is stored, so it cannot be shown again.
Uses the standard AWS credential chain (profile, environment, SSO...).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

DEFAULT_STACK_NAME = "qgjob"
TOKENS_OUTPUT = "TokensTableName"


class AdminError(RuntimeError):
    """A problem the operator can fix; printed without a traceback."""


def tokens_table_from_stack(stack_name: str, cloudformation: Any) -> str:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except (BotoCoreError, ClientError) as exc:
        raise AdminError(f"cannot read stack {stack_name!r}: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if TOKENS_OUTPUT not in outputs:
        raise AdminError(
            f"stack {stack_name!r} has no {TOKENS_OUTPUT} output; is it a qgjob stack?"
        )
    return str(outputs[TOKENS_OUTPUT])


def create_token(
    kind: str,
    org_id: str | None,
    tokens_table: str,
    label: str | None = None,
    target: str | None = None,
) -> str:
    # The token service reads the whole function configuration; only the tokens table
    # matters here, the rest gets placeholders that are never used.
    for name in ("JOBS_TABLE", "RUNS_TABLE", "AGENTS_TABLE", "BATCHES_TABLE",
                 "ESTIMATES_TABLE", "JOBS_QUEUE_URL", "ARTIFACTS_BUCKET"):  # fmt: skip
        os.environ.setdefault(name, "unused-by-token-admin")
    os.environ["TOKENS_TABLE"] = tokens_table
    from qgjob_backend.config import Config
    from qgjob_backend.wiring import build_token_service

    service = build_token_service(Config.from_env())
    token: str = service.create(kind=kind, org_id=org_id, label=label, target=target)
    return token


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-token", help="create an org or agent API token")
    create.add_argument(
        "--kind",
        choices=("org", "agent"),
        required=True,
        help="org: submit and read one org's jobs; agent: a fleet token that registers agents",
    )
    create.add_argument(
        "--org-id",
        help="the org the token belongs to (required for --kind org); with --kind agent, "
        "a private lab: its agents run only this org's jobs",
    )
    create.add_argument(
        "--target",
        choices=("emulator", "device", "browserstack"),
        help="--kind agent only: the one device pool its agents may register for",
    )
    where = create.add_mutually_exclusive_group()
    where.add_argument(
        "--stack-name",
        default=DEFAULT_STACK_NAME,
        help=f"CloudFormation stack to read {TOKENS_OUTPUT} from (default qgjob)",
    )
    where.add_argument("--tokens-table", help="tokens table name (skips the stack lookup)")
    create.add_argument("--label", help="a note stored with the token, e.g. github-ci")
    create.add_argument("--region", help="AWS region (default: your AWS configuration)")
    args = parser.parse_args(argv)
    if args.kind == "org" and not args.org_id:
        parser.error("--org-id is required with --kind org")
    if args.kind == "org" and args.target:
        parser.error("--target is only for --kind agent")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.region:
        os.environ["AWS_DEFAULT_REGION"] = args.region
    try:
        table = args.tokens_table or tokens_table_from_stack(
            args.stack_name, boto3.client("cloudformation")
        )
        token = create_token(args.kind, args.org_id, table, args.label, args.target)
    except (AdminError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"error: AWS refused or is unreachable: {exc}", file=sys.stderr)
        return 3
    if args.kind == "org":
        owner = f"org {args.org_id}"
    else:
        pool = f"{args.target} agents" if args.target else "agents of any target"
        owner = f"{pool} of org {args.org_id}'s private lab" if args.org_id else f"shared {pool}"
    print(token)
    print(
        f"\nA new {args.kind} token for {owner} (tokens table {table}).\n"
        "Store it now (e.g. as the QGJOB_TOKEN secret): only its hash is kept, "
        "it cannot be shown again.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
