"""The whole qgjob stack on one machine: ``python -m infra.local_stack`` (``make dev``).

What runs, all on 127.0.0.1:
- moto's server, with every table, queue and bucket of template.yaml (DynamoDB requests
  serialized, see infra.moto_server);
- the Lambda functions of template.yaml, in this process: the api function runs up to
  ``api_concurrency`` invocations at once (like that many warm containers), the others
  one at a time;
- an API Gateway shim: HTTP -> REST proxy events -> the api function -> HTTP;
- the push channel: the template's WebSocket API and its Management API
  (infra.websocket_gateway), so idle agents are woken by the dispatcher, not by polling;
- an SQS event-source poller feeding jobs.fifo to the dispatcher (partial batch failures);
- the EventBridge schedules (dispatcher planning, reaper), much faster than in AWS;
- simulated ``qgjob agent`` processes, a few per target.

Nothing here re-declares a resource: names, handlers, batch sizes and environment come
from template.yaml through infra.template.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import boto3

from infra import metering
from infra.agents import AgentPool, AgentProcess
from infra.moto_server import MotoServer
from infra.runtime import (
    HOST,
    ApiGatewayShim,
    Handler,
    LambdaFunction,
    Schedule,
    SqsEventSource,
    import_handler,
    rate_seconds,
)
from infra.template import FUNCTION_TYPE, LOCAL_STACK_NAME, LocalTemplate, provision
from infra.websocket_gateway import WebSocketGateway, websocket_api
from qgjob_backend.schema import Target

log = logging.getLogger("qgjob.local")

TARGETS = tuple(target.value for target in Target)
DEFAULT_ORGS = ("acme", "globex")
TokenFactory = Callable[[str, str | None], str]
# How long close() waits, in all, for the SQS poller and the schedules to end.
WORKERS_STOP_S = 3.0


@dataclass
class LocalStackOptions:
    port: int = 0
    state_dir: Path = Path(".qgjob-local")
    ready_file: Path | None = None
    lease_seconds: float = 10.0
    plan_interval: float = 2.0
    reap_interval: float = 1.0
    agents_per_target: int = 2
    start_agents: bool = True
    sim_scale: float = 1.0
    agent_poll_seconds: float = 0.5
    orgs: tuple[str, ...] = DEFAULT_ORGS
    targets: tuple[str, ...] = TARGETS
    # Extra template parameter values (LeaseSeconds comes from lease_seconds).
    parameters: dict[str, str] = field(default_factory=dict)
    # Send the functions' stdout logging to state_dir/functions.log (off when embedded in
    # a process that owns its console logging, e.g. a test runner).
    route_function_logs: bool = True
    # SIGTERM'd agents finish their current test first; after this they are killed. The
    # stack's state lives in memory and goes with it, so a prompt stop matters more.
    agent_stop_grace_s: float = 3.0
    # Invocations of the api function that run at once: a heartbeat need not wait for a
    # 1,000-test submit (the dispatcher and the reaper run one invocation at a time).
    api_concurrency: int = 4


# ----------------------------------------------------------------- the stack


def _backend_token_factory(kind: str, org_id: str | None) -> str:
    # Imported late: the backend reads its configuration from the environment set up first.
    from qgjob_backend.config import Config
    from qgjob_backend.wiring import build_token_service

    token: str = build_token_service(Config.from_env()).create(kind=kind, org_id=org_id)
    return token


@dataclass
class ReadyInfo:
    endpoint: str
    org_tokens: dict[str, str]
    agent_token: str
    moto_endpoint: str
    state_dir: str
    agents: list[str]
    push_url: str = ""  # the WebSocket push channel agents connect to ("" without one)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


class LocalStack:
    """Starts everything on enter, stops everything (agents first) on exit.

    Sets process-wide environment variables (the handlers read them on their first call),
    so one LocalStack per process.
    """

    def __init__(
        self,
        options: LocalStackOptions | None = None,
        *,
        handlers: Mapping[str, Handler] | None = None,
        token_factory: TokenFactory = _backend_token_factory,
        template: LocalTemplate | None = None,
    ) -> None:
        self.options = options or LocalStackOptions()
        parameters = {**self.options.parameters, "LeaseSeconds": self.options.lease_seconds}
        self.template = template or LocalTemplate.from_file(parameter_overrides=parameters)
        self._handler_overrides = dict(handlers or {})
        self._token_factory = token_factory
        self._stop = threading.Event()
        self._moto: MotoServer | None = None
        self._shim: ApiGatewayShim | None = None
        self.push_gateway: WebSocketGateway | None = None
        self._workers: list[SqsEventSource | Schedule] = []
        self.functions: dict[str, LambdaFunction] = {}
        self.agent_pool: AgentPool | None = None
        self.ready: ReadyInfo | None = None
        self.moto_endpoint = ""
        self._previous_sigterm: Any = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        if self._shim is None:
            raise RuntimeError("the local stack is not started")
        return self._shim.url

    # ---- start

    def start(self) -> None:
        self._unwind_on_sigterm()
        try:
            self._start()
        except BaseException:
            self.close()  # never leave servers or agents behind a failed start
            raise

    def _unwind_on_sigterm(self) -> None:
        """SIGTERM unwinds like Ctrl-C, unless the program handles it itself (``main``).

        By default SIGTERM ends the process on the spot: its agents, in their own sessions,
        would be left running against an API that is gone. `close` restores the default.
        """
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_signal)

    def _start(self) -> None:
        state_dir = self.options.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        metering.install_from_env(self.template, self._handler_overrides)  # QGJOB_METER_FILE
        self._start_moto()
        clients = {name: boto3.client(name) for name in ("dynamodb", "sqs", "s3")}
        refs = provision(self.template, clients)
        log.info("created %s", ", ".join(f"{k}={v}" for k, v in refs.items()))
        os.environ.update(self.template.function_environment())
        self._load_functions(state_dir / "functions.log")
        self._start_push_channel()  # before any function runs: they read PUSH_* once
        org_tokens = {org: self._token_factory("org", org) for org in self.options.orgs}
        agent_token = self._token_factory("agent", None)
        self._start_api()
        self._start_event_sources(clients["sqs"])
        self._start_schedules()
        self._check_health()
        agents = self._start_agents(agent_token) if self.options.start_agents else []
        self.ready = ReadyInfo(
            endpoint=self.endpoint,
            org_tokens=org_tokens,
            agent_token=agent_token,
            moto_endpoint=self.moto_endpoint,
            state_dir=str(state_dir.resolve()),
            agents=[a.agent_id for a in agents],
            push_url=self.push_gateway.url if self.push_gateway else "",
        )
        if self.options.ready_file:
            _write_atomically(self.options.ready_file, self.ready.to_json())

    def _start_moto(self) -> None:
        self._moto = MotoServer(HOST)
        self._moto.start()
        self.moto_endpoint = self._moto.endpoint
        # Service-specific endpoint variables would win over AWS_ENDPOINT_URL: drop them.
        for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL_")]:
            del os.environ[name]
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": self.moto_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": self.template.region,
                "AWS_REGION": self.template.region,
                # Account-based endpoints would bypass AWS_ENDPOINT_URL for DynamoDB.
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        # moto logs every request it serves; the stack's log keeps only its warnings.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    def _load_functions(self, log_path: Path) -> None:
        for logical_id in self.template.logical_ids(FUNCTION_TYPE):
            handler = self._handler_overrides.get(logical_id) or import_handler(
                self.template.function_handler(logical_id)
            )
            self.functions[logical_id] = LambdaFunction(
                f"{self.template.stack_name}-{logical_id}",
                handler,
                timeout_s=float(self._function_setting(logical_id, "Timeout", 3)),
                memory_mb=int(self._function_setting(logical_id, "MemorySize", 128)),
                region=self.template.region,
                account_id=self.template.account_id,
                concurrency=self._concurrency(logical_id),
            )
        if self.options.route_function_logs:
            _route_console_logs_to(log_path)

    def _concurrency(self, logical_id: str) -> int:
        behind_api = bool(self.template.function_events(logical_id, "HttpApi"))
        return self.options.api_concurrency if behind_api else 1

    def _function_setting(self, logical_id: str, name: str, default: Any) -> Any:
        globals_ = self.template.template.get("Globals", {}).get("Function", {})
        return self.template.properties(logical_id).get(name, globals_.get(name, default))

    def _functions_with_event(self, event_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (logical_id, self.template.resolve(event))
            for logical_id in self.functions
            for event in self.template.function_events(logical_id, event_type)
        ]

    def _start_api(self) -> None:
        api_functions = self._functions_with_event("HttpApi")
        if len(api_functions) != 1:
            raise RuntimeError(f"expected one function behind the API, found {api_functions}")
        logical_id, _ = api_functions[0]
        self._shim = ApiGatewayShim(
            self.functions[logical_id],
            stage=self.template.parameters["StageName"],
            port=self.options.port,
            account_id=self.template.account_id,
        )
        self._shim.start()

    def _start_push_channel(self) -> None:
        """The template's WebSocket API; its URLs replace the AWS ones in the environment."""
        spec = websocket_api(self.template)
        if spec is None:
            return
        self.push_gateway = WebSocketGateway(
            spec, self.functions, account_id=self.template.account_id
        )
        self.push_gateway.start()
        os.environ.update(
            {
                "PUSH_URL": self.push_gateway.url,
                "PUSH_ENDPOINT": self.push_gateway.management_endpoint,
            }
        )

    def _start_event_sources(self, sqs: Any) -> None:
        queue_urls = {
            self.template.get_att(q, "Arn"): str(self.template.ref(q))
            for q in self.template.logical_ids("AWS::SQS::Queue")
        }
        for logical_id, event in self._functions_with_event("SQS"):
            source = SqsEventSource(
                self.functions[logical_id],
                sqs,
                queue_url=queue_urls[event["Queue"]],
                queue_arn=event["Queue"],
                region=self.template.region,
                batch_size=int(event.get("BatchSize", 10)),
                stop=self._stop,
            )
            source.start()
            self._workers.append(source)

    def _start_schedules(self) -> None:
        # The template's rates are for AWS; locally the loops run every second or two.
        intervals = {
            "DispatcherFunction": self.options.plan_interval,
            "ReaperFunction": self.options.reap_interval,
        }
        for logical_id, event in self._functions_with_event("Schedule"):
            interval = intervals.get(logical_id) or rate_seconds(event["Schedule"])
            rule = f"{self.template.stack_name}-{logical_id}-schedule"
            arn = f"arn:aws:events:{self.template.region}:{self.template.account_id}:rule/{rule}"
            schedule = Schedule(
                self.functions[logical_id],
                interval_s=interval,
                rule_arn=arn,
                region=self.template.region,
                account_id=self.template.account_id,
                stop=self._stop,
            )
            schedule.start()
            self._workers.append(schedule)

    def _check_health(self) -> None:
        # No proxy: an HTTP_PROXY from the environment must not intercept 127.0.0.1.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.endpoint}/health", timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"GET /health answered {response.status}")

    def _start_agents(self, agent_token: str) -> list[AgentProcess]:
        self.agent_pool = AgentPool(
            endpoint=self.endpoint,
            agent_token=agent_token,
            state_dir=self.options.state_dir,
            sim_scale=self.options.sim_scale,
            poll_seconds=self.options.agent_poll_seconds,
        )
        return [
            self.agent_pool.start(target, f"local-{n}")
            for target in self.options.targets
            for n in range(1, self.options.agents_per_target + 1)
        ]

    # ---- stop

    def close(self) -> None:
        """Agents first (they hand work back through the API), then loops, then servers.

        Takes a few seconds at any load: requests waiting for the API are answered 503, not
        run; nothing is waited for without a deadline.
        """
        if self._shim is not None:
            self._shim.drop_waiting()  # the agents' hand-back need not queue behind them
        if self.agent_pool is not None:
            self.agent_pool.stop_all(grace_s=self.options.agent_stop_grace_s)
            self.agent_pool = None
        if self.push_gateway is not None:
            self.push_gateway.stop()  # connections close while the functions still run
            self.push_gateway = None
        self._stop.set()
        for function in self.functions.values():
            function.stop()  # the loops' waiting invocations end at once
        self._join_workers()
        metering.flush()  # the final counts, when QGJOB_METER_FILE is set
        if self._shim is not None:
            self._shim.stop()
            self._shim = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self.options.ready_file:
            self.options.ready_file.unlink(missing_ok=True)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _join_workers(self) -> None:
        deadline = time.monotonic() + WORKERS_STOP_S
        for worker in self._workers:
            if not worker.join(timeout=max(0.0, deadline - time.monotonic())):
                # A daemon thread inside a long invocation: it ends with the process.
                log.warning("%s is still running; not waiting for it", worker.name)
        self._workers.clear()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # Further SIGTERMs must not interrupt the clean-up this starts (it is bounded).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _route_console_logs_to(path: Path) -> None:
    """Sends the functions' log lines (Powertools writes to stdout) to a file.

    In AWS they go to CloudWatch; on a terminal they would bury the stack's own output.
    """
    stream = path.open("a", encoding="utf-8")  # stays open for the life of the process
    loggers = [
        logging.getLogger(),
        *(
            logger
            for logger in logging.root.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stdout,
                sys.stderr,
            ):
                handler.setStream(stream)


def _write_atomically(path: Path, text: str) -> None:
    # Readers poll for the file: they must never see it half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def configure_logging(state_dir: Path, verbose: bool = False) -> Path:
    """The stack's own log goes to a file; the terminal shows what a user needs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "local_stack.log"
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("werkzeug", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_path


# ------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None = None) -> LocalStackOptions:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local_stack",
        description="Run the whole qgjob stack locally on moto (Ctrl-C stops it).",
    )
    parser.add_argument("--port", type=int, default=0, help="API port (default 0: a free one)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".qgjob-local"),
        help="logs and agent journals (default .qgjob-local/)",
    )
    parser.add_argument(
        "--ready-file", type=Path, help="write endpoint and tokens as JSON here once ready"
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=10.0,
        help="agent lease (default 10; AWS default 120)",
    )
    parser.add_argument(
        "--plan-interval",
        type=float,
        default=2.0,
        help="seconds between scheduled dispatcher runs (default 2)",
    )
    parser.add_argument(
        "--reap-interval", type=float, default=1.0, help="seconds between reaper runs (default 1)"
    )
    parser.add_argument(
        "--agents-per-target", type=int, default=2, help="simulated agents per target (default 2)"
    )
    parser.add_argument("--no-agents", action="store_true", help="start no agents")
    parser.add_argument(
        "--sim-scale",
        type=float,
        default=1.0,
        help="simulated test duration multiplier (default 1.0)",
    )
    parser.add_argument(
        "--orgs",
        default=",".join(DEFAULT_ORGS),
        help="comma-separated orgs to create tokens for (default acme,globex)",
    )
    parser.add_argument("--batch-max-jobs", type=int, help="override BatchMaxJobs")
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a template parameter, e.g. BrowserStackApiUrl=http://127.0.0.1:8080 "
        "(repeatable)",
    )
    args = parser.parse_args(argv)
    parameters = {} if args.batch_max_jobs is None else {"BatchMaxJobs": str(args.batch_max_jobs)}
    for item in args.parameter:
        name, equals, value = item.partition("=")
        if not equals or not name:
            parser.error(f"--parameter {item!r}: expected NAME=VALUE")
        parameters[name] = value
    return LocalStackOptions(
        port=args.port,
        state_dir=args.state_dir,
        ready_file=args.ready_file,
        lease_seconds=args.lease_seconds,
        plan_interval=args.plan_interval,
        reap_interval=args.reap_interval,
        agents_per_target=args.agents_per_target,
        start_agents=not args.no_agents,
        sim_scale=args.sim_scale,
        orgs=tuple(org.strip() for org in args.orgs.split(",") if org.strip()),
        parameters=parameters,
    )


def banner(stack: LocalStack) -> str:
    ready = stack.ready
    assert ready is not None
    first_org = next(iter(ready.org_tokens), "")
    lines = [
        f"qgjob local stack ({LOCAL_STACK_NAME}) is up. Logs: {ready.state_dir}/",
        "",
        f"  API endpoint  {ready.endpoint}",
        f"  moto (AWS)    {ready.moto_endpoint}",
        *(f"  org token     {org}: {token}" for org, token in ready.org_tokens.items()),
        f"  agent token   {ready.agent_token}",
        f"  agents        {len(ready.agents)} simulated: {', '.join(ready.agents) or 'none'}",
        "",
        "Use it from another terminal: pick your org's line, then submit:",
        *(
            f"  export QGJOB_ENDPOINT_URL={ready.endpoint} QGJOB_TOKEN={token}   # {org}"
            for org, token in ready.org_tokens.items()
        ),
        f"  qgjob submit --org-id {first_org} --app-version-id v1 "
        "--test tests/login.spec.js --wait",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, *, handlers: Mapping[str, Handler] | None = None
) -> int:
    """``make dev``. ``handlers`` replaces template functions by logical id (tests)."""
    options = parse_args(argv)
    configure_logging(options.state_dir)
    # The handler only appends (no lock): an Event set from a signal handler can deadlock
    # with the main thread waiting on that same Event.
    stop_signals: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_signals.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print("starting the qgjob local stack...", flush=True)
    try:
        stack = LocalStack(options, handlers=handlers)
        stack.start()
    except OSError as exc:  # typically: --port already in use
        print(f"error: cannot start the local stack: {exc}", file=sys.stderr)
        return 1
    # How `python -m infra.admin --local` finds this stack (its moto endpoint).
    stack_file = options.state_dir / "stack.json"
    try:
        assert stack.ready is not None
        _write_atomically(stack_file, stack.ready.to_json())
        print(banner(stack), flush=True)
        while not stop_signals:
            time.sleep(0.2)
        print("stopping: agents first, then the stack...", flush=True)
    finally:
        stack_file.unlink(missing_ok=True)
        stack.close()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
