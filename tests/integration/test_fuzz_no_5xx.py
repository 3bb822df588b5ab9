"""No request, however malformed, gets a 5xx (property-based, fixed seed)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.integration.conftest import ApiCaller

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "org_id",
        "app_version_id",
        "test_path",
        "test_paths",
        "priority",
        "target",
        "idempotency_key",
        "timeout_s",
        "retries",
        "batch_id",
        "status",
        "duration_s",
        "device_id",
        "installed",
        "output",
        "message",
    ]
)
payloads = st.one_of(
    json_values,
    st.dictionaries(field_names, json_values, max_size=8),
    st.fixed_dictionaries(
        {"org_id": st.just("acme"), "app_version_id": st.text(max_size=70)},
        optional={
            "test_path": st.text(max_size=600),
            "priority": json_values,
            "target": st.text(max_size=15),
            "test_paths": st.lists(st.text(), max_size=3),
        },
    ),
)
routes = st.sampled_from(
    [
        ("POST", "/jobs"),
        ("POST", "/runs"),
        ("GET", "/jobs/{x}"),
        ("GET", "/runs/{x}"),
        ("GET", "/jobs/{x}/result"),
        ("POST", "/jobs/{x}/cancel"),
        ("POST", "/agents/register"),
        ("POST", "/agents/{x}/lease"),
        ("POST", "/agents/{x}/heartbeat"),
        ("POST", "/agents/{x}/jobs/{x}/start"),
        ("POST", "/agents/{x}/jobs/{x}/result"),
        ("POST", "/agents/{x}/batches/{x}/complete"),
        ("DELETE", "/jobs"),
        ("GET", "/{x}"),
    ]
)
path_parts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"),
    min_size=1,
    max_size=300,
)
raw_bodies = st.one_of(st.none(), st.just(b"truncate"), st.binary(max_size=64))


@seed(20261121)
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=routes, part=path_parts, body=payloads, raw=raw_bodies, use_agent=st.booleans())
def test_no_request_gets_a_5xx(
    client: ApiCaller,
    agent_client: ApiCaller,
    route: tuple[str, str],
    part: str,
    body: Any,
    raw: bytes | None,
    use_agent: bool,
) -> None:
    method, template = route
    path = template.replace("{x}", part)
    caller = agent_client if use_agent else client
    raw_body = json.dumps(body).encode()[:-1] if raw == b"truncate" else raw

    response = caller.request(method, path, body, raw_body=raw_body)

    assert response.status < 500, (method, path, body, response.body)
    assert isinstance(response.body, dict)
    if response.status >= 400:
        assert response.body.get("message")
