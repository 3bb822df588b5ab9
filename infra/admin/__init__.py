"""Administration of a qgjob stack (``python -m infra.admin --help``): tokens, agents,
the dead-letter queues, BrowserStack credentials."""

from infra.admin.cli import build_parser, main, set_browserstack_credentials
from infra.admin.stack import AdminError, StackResources, tokens_table_from_stack

__all__ = [
    "AdminError",
    "StackResources",
    "build_parser",
    "main",
    "set_browserstack_credentials",
    "tokens_table_from_stack",
]
