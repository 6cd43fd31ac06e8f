"""Run every benchmark script in this folder (``make bench``); none of them runs in CI.

Each benchmark is a standalone script that prints what it measured and on which data; this
runner only executes them one after another and reports which failed. Pass names to run a subset:
``python -m benchmarks ingest_bench dp_step_speed``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(p for p in here.glob("*.py") if not p.name.startswith("_"))
    if argv:
        wanted = {a.removesuffix(".py") for a in argv}
        scripts = [p for p in scripts if p.stem in wanted]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=here.parent, env=env)
        print(f"== {script.stem}: exit {rc} after {time.perf_counter() - start:.1f} s", flush=True)
        if rc:
            failed.append(script.stem)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
