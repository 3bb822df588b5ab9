"""qgjob's scheduling benchmark: traces, generators, lower bounds, a simulator and policies.

The simulator runs the planning core the dispatcher Lambda runs
(``qgjob_backend.domain.planner.plan_batches``). That package lives in ``functions/``
(the Lambda code root); when it is not importable yet (``python -m bench.…`` from the
repository root without ``PYTHONPATH=functions``), it is put on the path here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("qgjob_backend") is None:  # pragma: no cover - depends on the shell
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "functions"))
