"""template.yaml as `sam validate` / `sam deploy` expand it (offline), for template tests."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

from infra.template import TEMPLATE_PATH


def source_template() -> dict[str, Any]:
    parsed: dict[str, Any] = yaml_parse(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return parsed


@cache
def _expanded() -> dict[str, Any]:
    template = source_template()
    # The transform wants packaged code; the local path is irrelevant to these tests.
    template["Globals"]["Function"]["CodeUri"] = "s3://qgjob-test/code.zip"
    translator = Translator(
        None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1")
    )
    # No managed policy names are resolved through IAM: an empty map (the test is offline).
    result: dict[str, Any] = translator.translate(
        template, parameter_values={}, get_managed_policy_map=dict
    )
    return result


def expanded_template() -> dict[str, Any]:
    """A fresh copy each call: tests may change what they get."""
    import copy

    return copy.deepcopy(_expanded())


def resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """The properties of every resource of one type, by logical id."""
    return {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }
