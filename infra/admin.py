"""Administration of a deployed qgjob stack.

    python -m infra.admin create-token --kind org --org-id acme [--stack-name qgjob]
    python -m infra.admin create-token --kind agent --tokens-table qgjob-TokensTable-ABC123
    python -m infra.admin create-token --kind agent --target device --org-id acme
    BROWSERSTACK_ACCESS_KEY=... python -m infra.admin set-browserstack-credentials \
        --org-id acme --username alice_x1 [--stack-name qgjob]

An agent (fleet) token may only register device agents; each registration gets its own
credential for everything else. --target limits a fleet token to one device pool;
--org-id makes it a private lab's: its agents run only that org's jobs.

The tokens table is read from the CloudFormation stack's TokensTableName output unless
given. The token is printed once: only its hash is stored, so it cannot be shown again.
Uses the standard AWS credential chain (profile, environment, SSO...).

set-browserstack-credentials stores an org's BrowserStack App Automate credentials for
the results vault, as an SSM SecureString at /<stack-name>/browserstack/<org-id>. The
access key is read from $BROWSERSTACK_ACCESS_KEY or, when unset, from standard input
(never from the command line, which other users of the host can see); it is not printed.
"""

from __future__ import annotations

import argparse
import os
import re
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


def set_browserstack_credentials(
    org_id: str, username: str, access_key: str, stack_name: str, ssm: Any
) -> str:
    """Writes the org's credentials where the vault reads them; returns the parameter name."""
    from qgjob_backend.adapters.browserstack import (
        Credentials,
        credentials_to_json,
        parameter_name,
    )
    from qgjob_backend.schema import ID_PATTERN

    if not re.fullmatch(ID_PATTERN, org_id):
        raise AdminError(f"--org-id {org_id!r} is not a valid org id")
    if not username or not access_key:
        raise AdminError("the username and the access key must not be empty")
    name = parameter_name(f"/{stack_name}/browserstack", org_id)
    ssm.put_parameter(
        Name=name,
        Description=f"BrowserStack App Automate credentials of org {org_id} (qgjob vault)",
        Value=credentials_to_json(Credentials(username, access_key)),
        Type="SecureString",
        Overwrite=True,
    )
    return name


def _read_access_key() -> str:
    key = os.environ.get("BROWSERSTACK_ACCESS_KEY", "").strip()
    if key:
        return key
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("BrowserStack access key: ").strip()
    return sys.stdin.readline().strip()


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
    bs = commands.add_parser(
        "set-browserstack-credentials",
        help="store an org's BrowserStack App Automate credentials for the results vault",
    )
    bs.add_argument("--org-id", required=True, help="the org whose BrowserStack account it is")
    bs.add_argument(
        "--username",
        default=os.environ.get("BROWSERSTACK_USERNAME"),
        help="BrowserStack username (default $BROWSERSTACK_USERNAME); the access key comes "
        "from $BROWSERSTACK_ACCESS_KEY or standard input",
    )
    bs.add_argument(
        "--stack-name",
        default=DEFAULT_STACK_NAME,
        help="the qgjob stack whose vault reads them (default qgjob)",
    )
    bs.add_argument("--region", help="AWS region (default: your AWS configuration)")
    args = parser.parse_args(argv)
    if args.command == "set-browserstack-credentials":
        if not args.username:
            parser.error("--username (or $BROWSERSTACK_USERNAME) is required")
        return args
    if args.kind == "org" and not args.org_id:
        parser.error("--org-id is required with --kind org")
    if args.kind == "org" and args.target:
        parser.error("--target is only for --kind agent")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.region:
        os.environ["AWS_DEFAULT_REGION"] = args.region
    if args.command == "set-browserstack-credentials":
        return _set_browserstack_credentials(args)
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


def _set_browserstack_credentials(args: argparse.Namespace) -> int:
    try:
        name = set_browserstack_credentials(
            args.org_id, args.username, _read_access_key(), args.stack_name, boto3.client("ssm")
        )
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"error: AWS refused or is unreachable: {exc}", file=sys.stderr)
        return 3
    print(f"stored BrowserStack credentials of org {args.org_id} in SSM {name} (SecureString)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
