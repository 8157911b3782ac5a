"""Benchmark workers: one job in a fresh process, so heaps and compile caches do not mix."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_worker(script: str, job: list[Any], options: list[str]) -> Any:
    """Run `script --worker JOB OPTIONS` and return the JSON of its last stdout line (None
    when it fails; its stderr goes straight through, so progress shows while it works)."""
    command = [sys.executable, script, "--worker", json.dumps(job), *options]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        print(f"{job}: failed with exit code {result.returncode}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])
