"""`qgjob artifacts`: each finished job's full output and attachments, downloaded through the
short-lived links its result carries (bytes never pass through the API).

Layout: ``DIR/<job id>/output.log`` (the full output: the stored log when the output was
too long to keep on the job, else the excerpt, which then is all of it), one file per
attachment under its own name, and ``DIR/index.json`` listing what was written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from qgjob.client import ApiClient

# An attachment bigger than this is not downloaded (the agent caps uploads well below it).
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
CHUNK = 1024 * 1024


def safe_name(name: str) -> str:
    """A file name that stays inside its directory (no separators, no dot-dot)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned[:120] or "artifact"


def download(url: str, target: Path, *, limit: int = MAX_DOWNLOAD_BYTES) -> int:
    """Streams ``url`` to ``target``; returns the bytes written. Raises on HTTP errors or
    past ``limit`` (the partial file is removed)."""
    size = 0
    with requests.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        with target.open("wb") as handle:
            for chunk in response.iter_content(CHUNK):
                size += len(chunk)
                if size > limit:
                    handle.close()
                    target.unlink(missing_ok=True)
                    raise ValueError(f"{target.name}: larger than {limit} bytes")
                handle.write(chunk)
    return size


def fetch_job(
    client: ApiClient, job_id: str, directory: Path, note: Callable[[str], None]
) -> dict[str, Any]:
    """Downloads one job's output and attachments into ``directory / job_id``."""
    result = client.get_result(job_id)
    entry: dict[str, Any] = {"job_id": job_id, "status": result.get("status"), "files": []}
    if not result.get("finished"):
        entry["skipped"] = "not finished"
        return entry
    folder = directory / safe_name(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "output.log"
    if result.get("output_url"):
        download(str(result["output_url"]), log)
        entry["files"].append(str(log))
    elif result.get("output"):
        log.write_text(str(result["output"]), encoding="utf-8")
        entry["files"].append(str(log))
    used: set[str] = {"output.log"}
    for artifact in result.get("artifacts") or []:
        if not isinstance(artifact, Mapping) or not artifact.get("url"):
            continue
        name = safe_name(str(artifact.get("name") or "artifact"))
        while name in used:
            name = "_" + name
        used.add(name)
        try:
            download(str(artifact["url"]), folder / name)
            entry["files"].append(str(folder / name))
        except (requests.RequestException, ValueError) as error:
            note(f"qgjob: warning: job {job_id}: {name} not downloaded: {error}")
    return entry


def fetch(
    client: ApiClient, job_ids: Sequence[str], directory: Path, note: Callable[[str], None]
) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [fetch_job(client, job_id, directory, note) for job_id in job_ids]
    index = {"jobs": jobs, "files": sum(len(j["files"]) for j in jobs)}
    (directory / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return index
