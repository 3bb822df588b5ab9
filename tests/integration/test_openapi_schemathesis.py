"""The committed OpenAPI document tells the truth: schemathesis, in-process, fixed seed.

Over ``functions/qgjob_backend/openapi.json`` (what ``make openapi`` generates), every
operation gets generated requests (valid and invalid), sent through the api Lambda handler
as API Gateway proxy events against moto. No answer may be a 5xx, nor have a status code,
content type or body that the document does not list for its route.
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.case import Case
from urllib3 import HTTPHeaderDict, HTTPResponse

from infra.events import HttpRequest, LambdaContext, build_proxy_event
from qgjob_backend.handlers import api
from tests.integration.conftest import ACCOUNT, REGION, STAGE, AgentCaller, ApiCaller

DOCUMENT = Path(__file__).parents[2] / "functions" / "qgjob_backend" / "openapi.json"
BASE_URL = f"http://qgjob.test/{STAGE}"
CASES = 1_100  # >= 1,000 with room for the strategies' own early exhaustion
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class LambdaAdapter(BaseAdapter):
    """A requests transport that hands each request to the api Lambda handler."""

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **_: Any
    ) -> requests.Response:
        url = requests.utils.urlparse(request.url or "")
        path = url.path + (f"?{url.query}" if url.query else "")
        body = request.body or b""
        data = body.encode() if isinstance(body, str) else bytes(body)
        event = build_proxy_event(
            HttpRequest(request.method or "GET", path, list(request.headers.items()), data, "::1"),
            stage=STAGE,
            request_id=str(uuid.uuid4()),
            account_id=ACCOUNT,
            api_id="local",
        )
        result = api.lambda_handler(event, LambdaContext("ApiFunction", REGION, ACCOUNT))
        response = requests.Response()
        response.status_code = result["statusCode"]
        # API Gateway merges both header maps of a proxy result into the HTTP answer.
        headers = HTTPHeaderDict(result.get("headers") or {})
        for name, values in (result.get("multiValueHeaders") or {}).items():
            for value in values:
                headers.add(name, value)
        content = (result.get("body") or "").encode()
        response.raw = HTTPResponse(
            body=io.BytesIO(content),
            headers=headers,
            status=response.status_code,
            version=11,
            preload_content=False,
        )
        response.headers = CaseInsensitiveDict(headers)
        response._content = content
        response.url = request.url or ""
        response.request = request
        response.reason = "OK" if response.status_code < 400 else "Error"
        return response

    def close(self) -> None:
        pass


schema = schemathesis.openapi.from_path(str(DOCUMENT))
operations = [result.ok() for result in schema.get_all_operations()]


def _cases_of(operation: Any) -> st.SearchStrategy[Case]:
    """Valid requests of an operation and, where it takes input, invalid ones."""
    positive = operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)
    takes_input = operation.body or operation.path_parameters or operation.query
    if not takes_input:
        return positive
    negative = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
    return st.one_of(positive, negative)


# Every operation picked evenly, then one of its requests.
cases = st.sampled_from(operations).flatmap(_cases_of)
# Whose token a request carries: the one its route needs (to reach the route's own
# answers), another kind (403), none or a made-up one (401).
callers = st.sampled_from(["right", "right", "right", "org", "fleet", "none", "bogus"])
seen: Counter[tuple[str, int]] = Counter()


@pytest.fixture
def session() -> requests.Session:
    http = requests.Session()
    http.mount("http://qgjob.test", LambdaAdapter())
    return http


@seed(20261201)
@settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=cases, caller=callers, own_agent=st.booleans())
def test_every_answer_is_in_the_committed_document(
    client: ApiCaller,
    agent_client: AgentCaller,
    session: requests.Session,
    case: Case,
    caller: str,
    own_agent: bool,
) -> None:
    path = case.operation.path
    if not agent_client.credentials:
        registered = agent_client.post("/agents/register", {"target": "device", "device_id": "d1"})
        assert registered.status == 200, registered.body
    agent_id, credential = next(iter(agent_client.credentials.items()))
    is_agent_route = path.startswith("/agents/") and path != "/agents/register"
    if is_agent_route and own_agent:
        case.path_parameters = {**(case.path_parameters or {}), "agent_id": agent_id}
    tokens = {
        "org": client.token,
        "fleet": agent_client.fleet_token,
        "none": None,
        "bogus": "not-a-token",
    }
    if caller != "right":
        token = tokens[caller]
    elif is_agent_route:
        token = credential
    else:
        token = tokens["fleet" if path == "/agents/register" else "org"]
    headers = dict(case.headers or {})
    headers.pop("Authorization", None)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    case.headers = headers

    response = case.call_and_validate(base_url=BASE_URL, session=session, checks=CHECKS)

    seen[(f"{case.method.upper()} {path}", response.status_code)] += 1


def test_the_run_covered_every_operation_with_enough_cases() -> None:
    """Runs after the property above (same module, file order): it sent >= 1,000 cases
    and reached past authentication on every operation."""
    if not seen:
        pytest.skip("the schemathesis property did not run in this session")
    print(f"schemathesis: {sum(seen.values())} cases; (route, status) -> count: {dict(seen)}")
    assert sum(seen.values()) >= 1_000, sum(seen.values())
    reached = {route for (route, status) in seen if status not in (401, 403)}
    every = {f"{op.method.upper()} {op.path}" for op in operations}
    assert reached == every, sorted(every - reached)
