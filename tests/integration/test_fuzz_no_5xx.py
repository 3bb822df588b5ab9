"""No request, however malformed or hostile, gets a 5xx (property-based, fixed seed)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.integration.conftest import ApiCaller

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400)])  # json.dumps writes every digit
    | st.floats()  # NaN and +-Infinity included: json.dumps writes them as bare tokens
    | st.text(max_size=40),
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
        ("POST", "/agents/{a}/lease"),
        ("POST", "/agents/{a}/heartbeat"),
        ("POST", "/agents/{a}/jobs/{x}/start"),
        ("POST", "/agents/{a}/jobs/{x}/result"),
        ("POST", "/agents/{a}/batches/{x}/complete"),
        ("POST", "/agents/{a}/deregister"),
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
@given(
    route=routes,
    part=path_parts,
    body=payloads,
    raw=raw_bodies,
    use_agent=st.booleans(),
    registered=st.booleans(),
)
def test_no_request_gets_a_5xx(
    client: ApiCaller,
    agent_client: ApiCaller,
    route: tuple[str, str],
    part: str,
    body: Any,
    raw: bytes | None,
    use_agent: bool,
    registered: bool,
) -> None:
    method, template = route
    agent_id = part
    if use_agent and registered:
        # A registered agent's own routes get past auth, so the fuzz reaches the service.
        assert agent_client.post("/agents/register", REGISTER).status == 200
        agent_id = "device-d1"
    path = template.replace("{a}", agent_id).replace("{x}", part)
    caller = agent_client if use_agent else client
    raw_body = json.dumps(body).encode()[:-1] if raw == b"truncate" else raw

    response = caller.request(method, path, body, raw_body=raw_body)

    assert response.status < 500, (method, path, body, response.body)
    assert isinstance(response.body, dict)
    if response.status >= 400:
        assert response.body.get("message")


# ------------------------------------------------------------------ hostile bodies
# Raw JSON text that json.dumps would not write, aimed at the parsers: nesting deep
# enough to exhaust a recursive parser, numbers past the float range and past Python's
# int-to-str limit (4,300 digits), and tokens JSON does not have.
NESTINGS = [("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]
deep_values = st.builds(
    lambda depth, nesting: nesting[0] * depth + "1" + nesting[1] * depth,
    st.integers(min_value=1, max_value=3000),
    st.sampled_from(NESTINGS),
)
odd_numbers = st.sampled_from(
    [
        *("1e400", "-1e400", "1e-400", "1E+2147483648", "-0", "-0.0", "0e0"),
        *("10" + "0" * 399, "-" + "9" * 400, "1" + "0" * 5000),  # 10**400 and past 4,300 digits
        *("NaN", "Infinity", "-Infinity"),
    ]
)
plain_values = json_values.map(json.dumps)
hostile_values = st.one_of(deep_values, odd_numbers, plain_values)

JOB = {"org_id": "acme", "app_version_id": "v1", "test_path": "tests/a.spec.js"}
SUITE = {"org_id": "acme", "app_version_id": "v1", "test_paths": ["tests/a.spec.js"]}
REGISTER = {"target": "device", "device_id": "d1"}
REPORT = {"batch_id": "b1", "status": "passed", "duration_s": 1.0}
BODIES = [JOB, SUITE, REGISTER, REPORT]
_HOLE = "\x00hole"  # a string no generated body contains


def _with_hostile_field(body: dict[str, Any], field: str, value: str) -> str:
    """`body` as JSON text with `field` set to the raw JSON text `value`."""
    return json.dumps({**body, field: _HOLE}).replace(json.dumps(_HOLE), value)


fields_of_bodies = st.sampled_from(BODIES).flatmap(
    lambda body: st.tuples(st.just(body), st.sampled_from([*body, "extra"]))
)
hostile_bodies = st.one_of(
    st.builds(
        lambda pair, value: _with_hostile_field(*pair, value), fields_of_bodies, hostile_values
    ),
    hostile_values,  # at the top level: deep nesting, a bare number, any scalar
    st.lists(st.sampled_from(BODIES), min_size=1, max_size=3).map(json.dumps),  # [job, ...]
)
hostile_routes = st.sampled_from(
    [
        "/jobs",
        "/runs",
        "/jobs/job-x/cancel",
        "/agents/register",
        "/agents/device-d1/heartbeat",
        "/agents/device-d1/lease",
        "/agents/device-d1/jobs/j1/start",
        "/agents/device-d1/jobs/j1/result",
        "/agents/device-d1/batches/b1/complete",
        "/agents/device-d1/deregister",
    ]
)


@seed(20261122)
@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=hostile_routes, text=hostile_bodies)
def test_no_hostile_body_gets_a_5xx_and_only_an_object_is_accepted(
    client: ApiCaller, agent_client: ApiCaller, path: str, text: str
) -> None:
    caller = client
    if path.startswith("/agents/"):
        # Registered first, so the agent's own routes get past auth to the body.
        assert agent_client.post("/agents/register", REGISTER).status == 200
        caller = agent_client

    response = caller.post(path, raw_body=text.encode())

    assert response.status < 500, (path, text[:200], response.body)
    assert isinstance(response.body, dict)
    if response.status >= 400:
        assert response.body.get("message")
    if not text.startswith("{"):
        assert response.status >= 400, (path, text[:200], response.body)
