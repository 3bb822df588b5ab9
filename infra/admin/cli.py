"""The admin commands: argument parsing, output, exit codes. The work is in the services
(tokens, org settings), ``infra.admin.agents`` (drain) and ``infra.admin.dlq`` (redrive)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infra.admin.stack import (
    DEFAULT_STACK_NAME,
    DEFAULT_STATE_DIR,
    JOBS_QUEUE,
    STATE_TABLES,
    TOKENS_OUTPUT,
    TOKENS_TABLE,
    VAULT_QUEUE,
    AdminError,
    StackResources,
    from_cloudformation,
    from_local,
    tokens_table_from_stack,
)
from infra.admin.tokens import list_tokens
from qgjob_backend.schema import ID_PATTERN, OVERFLOW_FROM, Overflow, Target
from qgjob_backend.services.auth import TOKEN_CACHE_SECONDS

PROG = "python -m infra.admin"
TTL = f"{TOKEN_CACHE_SECONDS:g}"

DESCRIPTION = f"""\
Administration of a qgjob stack: API tokens, device agents, org settings, the dead-letter
queues and BrowserStack credentials. Run from the repository root with the dev virtualenv:

    PYTHONPATH=functions:. .venv/bin/python -m infra.admin tokens list --stack-name qgjob

Which stack: --stack-name NAME (a deployed stack; default $QGJOB_STACK_NAME or qgjob: its
tables and queues are read from CloudFormation) or --local (the stack `make dev` runs,
found through .qgjob-local/stack.json). AWS credentials: the standard chain (profile,
environment, SSO...). Every command takes --json for scripts (one JSON document on
stdout).

Exit codes: 0 done (also when there was nothing left to do, e.g. a token revoked twice);
2 bad input, unknown id or stack (the message names the field); 3 AWS refused or is
unreachable.

Tokens are checked by each warm API container at most once per {TTL} s: a revoked token
stops working within {TTL} seconds.
"""

TOKENS_HELP = f"""\
Org tokens (a CI pipeline, a developer: submit and read one org's jobs) and fleet tokens
(--kind agent: register device agents). Only a token's SHA-256 is stored: that hash is
the token id `tokens list` shows and `revoke` / `rotate` take; the token itself is
printed once, by `create` and `rotate`.

  {PROG} tokens create --kind org --org-id acme --label github-ci
  {PROG} tokens list --json
  {PROG} tokens revoke --token-id 3f2a...   # or: echo "$TOKEN" | ... --token-stdin
  {PROG} tokens rotate --token-id 3f2a...   # prints the new token, revokes the old

Revocation takes effect within {TTL} seconds (each API container caches a token it has
checked for that long). Revoking a fleet token stops new registrations; agents already
registered act with their own credentials: drain them (`agents drain`) to stop them.
"""

AGENTS_HELP = f"""\
Device agents. `list` reads the agents table's target index (one query per shard, never
a scan). `drain` lets an agent finish the batch it holds and gives it no other, even
across restarts, until `undrain`; `list` shows "drained, safe to stop" once it holds no
batch. A plan already running when the drain lands may still give it one more batch:
wait for "safe to stop" before you stop the process.

  {PROG} agents list --target device
  {PROG} agents drain --agent-id lab3-pixel7 --agent-id lab3-pixel8
  {PROG} agents drain --lab acme        # every agent of org acme's private lab
  {PROG} agents undrain --agent-id lab3-pixel7
"""

_HOMES = " and ".join(t.value for t in OVERFLOW_FROM)
ORGS_HELP = f"""\
Org settings, one item per org (each submission of the org reads it: one GetItem).
`--overflow browserstack` makes the org's {_HOMES} runs
overflow to BrowserStack by default: their waiting tests may move there when it would
finish them sooner (as with `qgjob submit --overflow browserstack`). A submission that
says `--overflow none` (API: "overflow": "none") opts out; BrowserStack runs never
overflow. Runs submitted before a change keep what they had, and a submission may miss
a change of the last second (it reads the setting eventually consistently).

  {PROG} orgs set --org-id acme --overflow browserstack
  {PROG} orgs set --org-id acme --overflow none     # back to the default: never
  {PROG} orgs show --org-id acme --json
"""

DLQ_HELP = f"""\
The dead-letter queues: jobs (jobs.fifo's: plan requests and job admissions that failed
5 times) and vault (archive requests that kept failing). `inspect` shows what is there
and what a redrive would do, and leaves it queued; `redrive` does it: a job still waiting
for admission is sent back to jobs.fifo (admission is a conditional write, so a job is
admitted once however often it is redriven), a job admitted, finished or gone is dropped,
plan requests become one new request, vault messages go back to the vault queue. Fix the
cause first (the dispatcher's or the vault's errors in their logs).

  {PROG} dlq inspect --queue jobs
  {PROG} dlq redrive --queue jobs --limit 100
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


EXAMPLES = {
    "tokens create": f"""examples:
  {PROG} tokens create --kind org --org-id acme --label github-ci
  {PROG} tokens create --kind agent --target device --org-id acme --label lab-3
  {PROG} tokens create --kind org --org-id acme --local --json | jq -r .token""",
    "tokens list": f"""examples:
  {PROG} tokens list
  {PROG} tokens list --all --json | jq '.tokens[] | select(.org_id == "acme")'""",
    "tokens revoke": f"""A revoked token is refused by every API container within {TTL} s
(each caches a token it checked for that long). Revoking twice changes nothing (exit 0).

examples:
  {PROG} tokens revoke --token-id 3f2a...
  printf '%s\\n' "$LEAKED" | {PROG} tokens revoke --token-stdin""",
    "tokens rotate": f"""Prints the new token on stdout; the old one is revoked (refused
within {TTL} s) and points at its replacement. For a rotation without a failed build,
`tokens create` the new one, update the secret, then `tokens revoke` the old one.

examples:
  {PROG} tokens rotate --token-id 3f2a... --json""",
    "agents list": f"""state: idle, busy, offline; "draining" (drained, still running its batch) or
"drained, safe to stop".

examples:
  {PROG} agents list --target device --lab acme
  {PROG} agents list --all --json | jq -r '.agents[] | select(.state == "draining") | .agent_id'""",
    "agents drain": f"""examples:
  {PROG} agents drain --agent-id device-rack3-01 --agent-id device-rack3-02
  {PROG} agents drain --lab acme --target device""",
    "agents undrain": f"""examples:
  {PROG} agents undrain --lab acme""",
    "orgs set": f"""Setting what is set already changes nothing (exit 0).

examples:
  {PROG} orgs set --org-id acme --overflow browserstack
  {PROG} orgs set --org-id acme --overflow none --local""",
    "orgs show": f"""examples:
  {PROG} orgs show --org-id acme
  {PROG} orgs show --org-id acme --json | jq -r .overflow""",
    "dlq inspect": f"""examples:
  {PROG} dlq inspect --queue jobs --json | jq '.messages[] | {{kind, job_id, verdict}}'""",
    "dlq redrive": f"""examples:
  {PROG} dlq redrive --queue jobs
  {PROG} dlq redrive --queue vault --limit 500""",
    "browserstack set-credentials": f"""examples:
  BROWSERSTACK_ACCESS_KEY=... {PROG} browserstack set-credentials \\
      --org-id acme --username alice_x1""",
}


def _id(name: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(ID_PATTERN, value):
            raise argparse.ArgumentTypeError(
                f"{name} {value!r} must be 1-64 characters of [A-Za-z0-9._-]"
            )
        return value

    return check


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def check(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number} is not between {low} and {high}")
        return number

    return check


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("which stack")
    place = where.add_mutually_exclusive_group()
    place.add_argument(
        "--stack-name",
        default=os.environ.get("QGJOB_STACK_NAME") or DEFAULT_STACK_NAME,
        help="the deployed CloudFormation stack (default $QGJOB_STACK_NAME or qgjob)",
    )
    place.add_argument(
        "--local", action="store_true", help="the local stack `make dev` runs (on moto)"
    )
    where.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        help="with --local: where `make dev` keeps its state (default .qgjob-local)",
    )
    where.add_argument("--region", help="AWS region (default: your AWS configuration)")
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=_Formatter)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def sub(
        group: str, parent: Any, name: str, help_text: str, description: str | None = None
    ) -> Any:
        return parent.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            epilog=EXAMPLES.get(f"{group} {name}"),
            parents=[common],
            formatter_class=_Formatter,
        )

    # ------------------------------------------------------------- tokens
    tokens = groups.add_parser(
        "tokens",
        help="create, list, revoke and rotate API tokens",
        description=TOKENS_HELP,
        formatter_class=_Formatter,
    )
    token_commands = tokens.add_subparsers(dest="command", required=True, metavar="ACTION")
    create = sub("tokens", token_commands, "create", "create an org or fleet token (printed once)")
    _token_scope_arguments(create)
    listing = sub(
        "tokens",
        token_commands,
        "list",
        "list tokens, a page at a time",
        "List every token, revoked ones too, a page at a time. The tokens table is keyed\n"
        "by hash alone, so this reads it with a paginated Scan: an operator's listing,\n"
        "never something a request does. A page holds at most --limit tokens; pass the\n"
        "printed --after value to read the next one, or --all to read them all.",
    )
    listing.add_argument(
        "--limit", type=_bounded(1, 1000), default=50, help="tokens per page (default 50)"
    )
    listing.add_argument("--after", help="the cursor a previous page printed")
    listing.add_argument("--all", action="store_true", help="read every page")
    for name, text in (
        ("revoke", f"revoke a token: refused everywhere within {TTL} s"),
        ("rotate", "issue a new token of the same scope and revoke the old one"),
    ):
        command = sub("tokens", token_commands, name, text)
        which = command.add_mutually_exclusive_group(required=True)
        which.add_argument("--token-id", help="the token's id (its SHA-256, from `tokens list`)")
        which.add_argument(
            "--token-stdin",
            action="store_true",
            help="read the token itself from standard input (never from the command line)",
        )

    # ------------------------------------------------------------- agents
    agents = groups.add_parser(
        "agents",
        help="list, drain and undrain device agents",
        description=AGENTS_HELP,
        formatter_class=_Formatter,
    )
    agent_commands = agents.add_subparsers(dest="command", required=True, metavar="ACTION")
    listed = sub("agents", agent_commands, "list", "list device agents and what they are doing")
    _agent_filters(listed)
    listed.add_argument("--all", action="store_true", help="include offline agents without a batch")
    for name, text in (
        ("drain", "let agents finish their batch, then give them no new work"),
        ("undrain", "give drained agents work again"),
    ):
        command = sub("agents", agent_commands, name, text)
        command.add_argument(
            "--agent-id", action="append", default=[], help="an agent id (repeatable)"
        )
        _agent_filters(command)

    # --------------------------------------------------------------- orgs
    orgs = groups.add_parser(
        "orgs",
        help="set and show an org's settings (its default overflow)",
        description=ORGS_HELP,
        formatter_class=_Formatter,
    )
    org_commands = orgs.add_subparsers(dest="command", required=True, metavar="ACTION")
    setting = sub("orgs", org_commands, "set", "set the pool an org's runs overflow to by default")
    setting.add_argument("--org-id", type=_id("--org-id"), required=True, help="the org")
    setting.add_argument(
        "--overflow",
        choices=[o.value for o in Overflow],
        required=True,
        help=f"the pool its {_HOMES} runs overflow to when their submission does not say; "
        "none: never",
    )
    showing = sub("orgs", org_commands, "show", "show an org's settings")
    showing.add_argument("--org-id", type=_id("--org-id"), required=True, help="the org")

    # ---------------------------------------------------------------- dlq
    dlq = groups.add_parser(
        "dlq",
        help="inspect and redrive the dead-letter queues",
        description=DLQ_HELP,
        formatter_class=_Formatter,
    )
    dlq_commands = dlq.add_subparsers(dest="command", required=True, metavar="ACTION")
    for name, text, default in (
        ("inspect", "show what is in a dead-letter queue (it stays there)", 20),
        ("redrive", "send a dead-letter queue's messages back where they belong", 100),
    ):
        command = sub("dlq", dlq_commands, name, text)
        command.add_argument(
            "--queue", choices=("jobs", "vault"), default="jobs", help="which one (default jobs)"
        )
        command.add_argument(
            "--limit",
            type=_bounded(1, 1000),
            default=default,
            help=f"at most this many messages (default {default})",
        )

    # ------------------------------------------------------- browserstack
    browserstack = groups.add_parser(
        "browserstack",
        help="BrowserStack credentials of an org (for the results vault)",
        description="BrowserStack App Automate credentials of an org, read by the results vault.",
        formatter_class=_Formatter,
    )
    bs_commands = browserstack.add_subparsers(dest="command", required=True, metavar="ACTION")
    _browserstack_arguments(
        sub("browserstack", bs_commands, "set-credentials", "store an org's BrowserStack login")
    )

    # ------------------------------------ the first commands, kept as they were
    legacy = groups.add_parser(
        "create-token",
        help="same as `tokens create` (with --tokens-table)",
        description="Same as `tokens create`; --tokens-table skips the stack lookup.",
        parents=[common],
        formatter_class=_Formatter,
    )
    _token_scope_arguments(legacy)
    legacy.add_argument("--tokens-table", help="tokens table name (skips the stack lookup)")
    _browserstack_arguments(
        groups.add_parser(
            "set-browserstack-credentials",
            help="same as `browserstack set-credentials`",
            description="Same as `browserstack set-credentials`.",
            parents=[common],
            formatter_class=_Formatter,
        )
    )
    return parser


def _token_scope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        choices=("org", "agent"),
        required=True,
        help="org: submit and read one org's jobs; agent: a fleet token that registers agents",
    )
    parser.add_argument(
        "--org-id",
        type=_id("--org-id"),
        help="the org the token belongs to (required for --kind org); with --kind agent, "
        "a private lab: its agents run only this org's jobs",
    )
    parser.add_argument(
        "--target",
        choices=[t.value for t in Target],
        help="--kind agent only: the one device pool its agents may register for",
    )
    parser.add_argument("--label", help="a note stored with the token, e.g. github-ci")


def _agent_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        action="append",
        choices=[t.value for t in Target],
        help="only agents of this target (repeatable; default all)",
    )
    parser.add_argument(
        "--lab", type=_id("--lab"), help="only the agents of this org's private lab"
    )


def _browserstack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org-id", required=True, help="the org whose BrowserStack account it is")
    parser.add_argument(
        "--username",
        default=os.environ.get("BROWSERSTACK_USERNAME"),
        help="BrowserStack username (default $BROWSERSTACK_USERNAME); the access key comes "
        "from $BROWSERSTACK_ACCESS_KEY or standard input, never from the command line",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.group in ("browserstack", "set-browserstack-credentials") and not args.username:
        parser.error("--username (or $BROWSERSTACK_USERNAME) is required")
    if getattr(args, "kind", None) == "org":
        if not args.org_id:
            parser.error("--org-id is required with --kind org")
        if args.target:
            parser.error("--target is only for --kind agent")
    if args.group == "agents" and args.command in ("drain", "undrain"):
        if not args.agent_id and not args.lab and not args.target:
            parser.error(f"agents {args.command}: name --agent-id, --lab or --target")
        for agent_id in args.agent_id:
            if not re.fullmatch(r"[A-Za-z0-9._@-]{1,160}", agent_id):
                parser.error(f"--agent-id {agent_id!r} is not an agent id")
    return args


# ----------------------------------------------------------------- running


def main(
    argv: Sequence[str] | None = None,
    *,
    resources: StackResources | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """``resources``: the stack to act on (tests); by default from --stack-name / --local."""
    args = parse_args(argv)
    if args.region:
        os.environ["AWS_DEFAULT_REGION"] = args.region
    try:
        output = _run(args, resources, clock)
    except (AdminError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"error: AWS refused or is unreachable: {exc}", file=sys.stderr)
        return 3
    text, document = output
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True, default=str))
    elif text:
        print(text)
    return 0


def _stack(args: argparse.Namespace, resources: StackResources | None) -> StackResources:
    if resources is not None:
        return resources
    if args.local:
        return from_local(Path(args.state_dir))
    return from_cloudformation(args.stack_name, boto3.Session(region_name=args.region))


def _run(
    args: argparse.Namespace, resources: StackResources | None, clock: Callable[[], float]
) -> tuple[str, Any]:
    if args.group in ("browserstack", "set-browserstack-credentials"):
        return _set_browserstack_credentials(args, resources)
    if args.group == "create-token" and args.tokens_table:
        return _create_token(args, _token_service(args.tokens_table, None, clock))
    if args.group == "create-token" and resources is None and not args.local:
        # As it always did: the stack's TokensTableName output (one describe call).
        table = tokens_table_from_stack(args.stack_name, boto3.client("cloudformation"))
        return _create_token(args, _token_service(table, None, clock))
    stack = _stack(args, resources)
    if args.group in ("tokens", "create-token"):
        service = _token_service(stack.name(TOKENS_TABLE), stack, clock)
        command = "create" if args.group == "create-token" else args.command
        return _TOKEN_COMMANDS[command](args, service)
    if args.group == "agents":
        return _agents(args, stack, clock)
    if args.group == "orgs":
        return _orgs(args, stack, clock)
    return _dlq(args, stack)


# ----------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Tokens:
    service: Any  # TokenService over the table
    client: Any  # DynamoDB, for the listing
    table: str


def _token_service(table: str, stack: StackResources | None, clock: Callable[[], float]) -> _Tokens:
    from qgjob_backend.adapters.dynamodb import DynamoTokenStore
    from qgjob_backend.services.auth import TokenService

    client = stack.client("dynamodb") if stack is not None else boto3.client("dynamodb")
    return _Tokens(TokenService(DynamoTokenStore(client, table), clock), client, table)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _token_json(record: Any) -> dict[str, Any]:
    view = asdict(record)
    view["token_id"] = view.pop("token_hash")
    view["revoked"] = record.revoked_at is not None
    return view


def _owner(kind: str, org_id: str | None, target: str | None) -> str:
    if kind == "org":
        return f"org {org_id}"
    pool = f"{target} agents" if target else "agents of any target"
    return f"{pool} of org {org_id}'s private lab" if org_id else f"shared {pool}"


def _create_token(args: argparse.Namespace, tokens: _Tokens) -> tuple[str, Any]:
    from qgjob_backend.services.auth import hash_token

    token = tokens.service.create(
        kind=args.kind, org_id=args.org_id, label=args.label, target=args.target
    )
    print(
        f"A new {args.kind} token for {_owner(args.kind, args.org_id, args.target)} "
        f"(id {hash_token(token)}).\nStore it now (e.g. as the QGJOB_TOKEN secret): only its "
        "hash is kept, it cannot be shown again.",
        file=sys.stderr,
    )
    return token, {"token": token, "token_id": hash_token(token), "kind": args.kind}


def _token_list(args: argparse.Namespace, tokens: _Tokens) -> tuple[str, Any]:
    records, after = [], args.after
    while True:
        page = list_tokens(tokens.client, tokens.table, after, args.limit)
        records.extend(page.records)
        after = page.after
        if not args.all or after is None:
            break
    rows = [
        f"{r.token_hash}  {r.kind:5}  {r.org_id or '-':16}  {r.target or '-':12}  "
        f"{_when(r.created_at)}  {'revoked ' + _when(r.revoked_at) if r.revoked_at else 'active'}"
        f"  {r.label or ''}"
        for r in records
    ]
    header = f"{'token id':64}  kind   {'org':16}  {'target':12}  {'created':25}  state"
    more = f"\nmore: --after {after}" if after else ""
    text = "\n".join([header, *rows]) + more if rows else "no tokens" + more
    return text, {"tokens": [_token_json(r) for r in records], "after": after}


def _token_id(args: argparse.Namespace) -> str:
    from qgjob_backend.services.auth import hash_token

    if args.token_id:
        return str(args.token_id).strip().lower()
    token = sys.stdin.readline().strip()
    if not token:
        raise AdminError("--token-stdin: standard input held no token")
    return hash_token(token)


def _token_revoke(args: argparse.Namespace, tokens: _Tokens) -> tuple[str, Any]:
    from qgjob_backend.services.errors import Conflict, NotFound

    token_id = _token_id(args)
    try:
        record = tokens.service.revoke(token_id)
        changed = True
    except NotFound:
        raise AdminError(f"--token-id: no token has id {token_id}") from None
    except Conflict:
        record, changed = tokens.service.get(token_id), False
    owner = _owner(record.kind, record.org_id, record.target)
    if changed:
        text = (
            f"revoked token {token_id} ({owner}): every API container refuses it within "
            f"{TTL} s (by {_when(record.revoked_at + TOKEN_CACHE_SECONDS)})"
        )
    else:
        text = f"token {token_id} ({owner}) was already revoked at {_when(record.revoked_at)}"
    if record.kind == "agent":
        text += (
            "\nagents it registered keep their own credentials: drain them "
            "(`agents drain`) to stop them"
        )
    return text, {
        "token": _token_json(record),
        "changed": changed,
        "effective_within_s": TOKEN_CACHE_SECONDS,
    }


def _token_rotate(args: argparse.Namespace, tokens: _Tokens) -> tuple[str, Any]:
    from qgjob_backend.services.auth import hash_token
    from qgjob_backend.services.errors import Conflict, NotFound

    token_id = _token_id(args)
    try:
        token, old = tokens.service.rotate(token_id)
    except NotFound:
        raise AdminError(f"--token-id: no token has id {token_id}") from None
    except Conflict as exc:
        raise AdminError(f"--token-id: {exc.message}; create a new one instead") from None
    print(
        f"A new {old.kind} token for {_owner(old.kind, old.org_id, old.target)} "
        f"(id {hash_token(token)}) replaces {token_id}, revoked: it stops working within "
        f"{TTL} s. Store the new one now: it cannot be shown again.",
        file=sys.stderr,
    )
    return token, {"token": token, "token_id": hash_token(token), "replaced": _token_json(old)}


_TOKEN_COMMANDS: dict[str, Callable[[argparse.Namespace, _Tokens], tuple[str, Any]]] = {
    "create": _create_token,
    "list": _token_list,
    "revoke": _token_revoke,
    "rotate": _token_rotate,
}


# ----------------------------------------------------------------- agents


def _state_store(stack: StackResources) -> Any:
    from qgjob_backend.adapters.dynamodb import DynamoStateStore

    return DynamoStateStore(
        stack.client("dynamodb"),
        jobs_table=stack.name(STATE_TABLES["jobs_table"]),
        runs_table=stack.name(STATE_TABLES["runs_table"]),
        agents_table=stack.name(STATE_TABLES["agents_table"]),
        batches_table=stack.name(STATE_TABLES["batches_table"]),
    )


def _request_plan(stack: StackResources) -> Callable[[], None]:
    from qgjob_backend.adapters.sqs import SqsJobQueue

    return SqsJobQueue(stack.client("sqs"), stack.name(JOBS_QUEUE)).request_plan


def _agents(
    args: argparse.Namespace, stack: StackResources, clock: Callable[[], float]
) -> tuple[str, Any]:
    from infra.admin.agents import AgentAdmin, agent_view

    admin = AgentAdmin(
        stack.client("dynamodb"),
        stack.name(STATE_TABLES["agents_table"]),
        _state_store(stack),
        clock,
        request_plan=_request_plan(stack),
    )
    targets = [Target(t) for t in args.target] if args.target else list(Target)
    now = clock()
    if args.command == "list":
        agents = admin.list(targets, args.lab, include_offline=args.all)
        views = [agent_view(a, now) for a in agents]
        rows = [
            f"{v['agent_id']:32}  {v['target']:12}  {v['state']:22}  {v['batch_id'] or '-':28}  "
            f"{v['lab_org_id'] or 'shared':12}  seen {v['last_seen_s_ago']:g} s ago"
            for v in views
        ]
        header = f"{'agent':32}  {'target':12}  {'state':22}  {'batch':28}  {'lab':12}  last seen"
        return ("\n".join([header, *rows]) if rows else "no agents"), {"agents": views}
    agent_ids = list(dict.fromkeys(args.agent_id))
    if args.lab or (args.target and not agent_ids):
        agent_ids += [
            a.agent_id for a in admin.list(targets, args.lab) if a.agent_id not in agent_ids
        ]
        if not agent_ids:
            raise AdminError("--lab/--target: no agent matches")
    act = admin.drain if args.command == "drain" else admin.undrain
    results, lines = [], []
    for agent_id in agent_ids:
        try:
            result = act(agent_id)
        except LookupError:
            raise AdminError(f"--agent-id: no agent has id {agent_id}") from None
        results.append({**agent_view(result.agent, now), "changed": result.changed})
        lines.append(_drain_line(args.command, result))
    return "\n".join(lines), {"agents": results}


def _drain_line(command: str, result: Any) -> str:
    agent = result.agent
    if command == "undrain":
        return f"{agent.agent_id}: " + (
            "gets work again" if result.changed else "was not drained (nothing changed)"
        )
    already = "" if result.changed else " (already drained: nothing changed)"
    if agent.batch_id is None:
        return f"{agent.agent_id}: drained, holds no batch: safe to stop{already}"
    return (
        f"{agent.agent_id}: draining{already}: it finishes batch {agent.batch_id}, then gets "
        "no new work; `agents list` says when it is safe to stop"
    )


# ------------------------------------------------------------------- orgs


def _org_settings_json(settings: Any) -> dict[str, Any]:
    return {
        "org_id": settings.org_id,
        "overflow": settings.overflow.value if settings.overflow else None,
        "updated_at": settings.updated_at,
        "version": settings.version,
    }


def _overflow_text(settings: Any) -> str:
    if settings.overflow is None:
        return f"org {settings.org_id}: its runs never overflow unless submitted with --overflow"
    return (
        f"org {settings.org_id}: its {_HOMES} runs overflow to {settings.overflow.value} "
        "unless submitted with --overflow none"
    )


def _orgs(
    args: argparse.Namespace, stack: StackResources, clock: Callable[[], float]
) -> tuple[str, Any]:
    from qgjob_backend.adapters.dynamodb.org_settings import DynamoOrgSettingsStore
    from qgjob_backend.services.errors import ServiceError
    from qgjob_backend.services.org_settings import OrgSettingsService

    store = DynamoOrgSettingsStore(stack.client("dynamodb"), stack.name(STATE_TABLES["runs_table"]))
    service = OrgSettingsService(store, clock)
    try:
        if args.command == "show":
            settings = service.settings(args.org_id)
            when = (
                f" (set {_when(settings.updated_at)}, version {settings.version})"
                if settings.version
                else " (never set: the default)"
            )
            return _overflow_text(settings) + when, _org_settings_json(settings)
        change = service.set_overflow(args.org_id, Overflow(args.overflow).pool)
    except ServiceError as exc:
        raise AdminError(exc.message) from None
    settings = change.settings
    if change.changed:
        text = f"{_overflow_text(settings)} (from now on; runs already submitted keep theirs)"
    else:
        text = f"{_overflow_text(settings)} (already so: nothing changed)"
    return text, {"settings": _org_settings_json(settings), "changed": change.changed}


# -------------------------------------------------------------------- dlq


def _dlq(args: argparse.Namespace, stack: StackResources) -> tuple[str, Any]:
    from infra.admin.dlq import DeadLetters

    source = JOBS_QUEUE if args.queue == "jobs" else VAULT_QUEUE
    fifo = args.queue == "jobs"
    letters = DeadLetters(
        stack.client("sqs"),
        stack.name(stack.dead_letter_queue(source)),
        stack.name(source),
        fifo=fifo,
        store=_state_store(stack) if fifo else None,
        request_plan=_request_plan(stack) if fifo else None,
    )
    depth = letters.depth()
    if args.command == "inspect":
        found = letters.inspect(args.limit)
        rows = [
            f"{x.message_id}  {x.kind:9}  {x.job_id or '-':28}  received {x.receive_count}x  "
            f"sent {_when(x.sent_at)}  -> {x.verdict}"
            for x in found
        ]
        head = (
            f"{args.queue} dead-letter queue: about {depth['visible']} messages "
            f"({depth['in_flight']} in flight); showing {len(found)}"
        )
        return "\n".join([head, *rows]), {"depth": depth, "messages": [x.to_json() for x in found]}
    report, found = letters.redrive(args.limit)
    text = (
        f"{args.queue} dead-letter queue: re-sent {len(report.resent)}, dropped "
        f"{len(report.dropped)} (nothing left to do), kept {len(report.kept)}"
        + (", one plan requested" if report.plan_requested else "")
    )
    text += "".join(f"\n  {x.message_id}  {x.job_id or x.kind}: {x.verdict}" for x in found)
    return text, {"report": report.to_json(), "messages": [x.to_json() for x in found]}


# ----------------------------------------------------------- browserstack


def set_browserstack_credentials(
    org_id: str, username: str, access_key: str, stack_name: str, ssm: Any
) -> str:
    """Writes the org's credentials where the vault reads them; returns the parameter name."""
    from qgjob_backend.adapters.browserstack import (
        Credentials,
        credentials_to_json,
        parameter_name,
    )

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


def _set_browserstack_credentials(
    args: argparse.Namespace, resources: StackResources | None
) -> tuple[str, Any]:
    stack = resources or (from_local(Path(args.state_dir)) if args.local else None)
    ssm = stack.client("ssm") if stack is not None else boto3.client("ssm")
    stack_name = stack.stack_name if stack is not None else args.stack_name
    name = set_browserstack_credentials(
        args.org_id, args.username, _read_access_key(), stack_name, ssm
    )
    text = f"stored BrowserStack credentials of org {args.org_id} in SSM {name} (SecureString)"
    return text, {"parameter": name, "org_id": args.org_id}


__all__ = [
    "TOKENS_OUTPUT",
    "AdminError",
    "build_parser",
    "main",
    "set_browserstack_credentials",
    "tokens_table_from_stack",
]
