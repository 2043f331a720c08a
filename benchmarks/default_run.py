#!/usr/bin/env python3
"""Wall time, peak memory and accuracy of the default run, as a user runs it.

Runs ``python scripts/run.py`` (no arguments besides an output directory and
a free metrics port) as a subprocess several times and prints, per run and as
medians: wall time from process start to exit, peak RSS of the process, final
validation accuracy and germinations.

    python benchmarks/default_run.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free loopback port (8000 may be taken by a run the user is watching)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one(out: Path) -> dict[str, float]:
    """One default run: wall seconds, peak RSS MB, val accuracy, germinations."""
    before = os.wait4 if hasattr(os, "wait4") else None
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py"), "--output_dir", str(out),
                             "--metrics_port", str(free_port())], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert before is not None, "needs os.wait4 (Linux/macOS)"
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"default run failed with status {status}")
    doc = json.loads(next(out.glob("runs/*/metrics.json")).read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "val_accuracy": doc["metrics"]["val_accuracy"],
            "germinations": doc["metrics"]["germinations"]}


def main() -> None:
    """Run and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for i in range(args.reps):
        with tempfile.TemporaryDirectory() as d:
            rows.append(one(Path(d)))
    keys = list(rows[0])
    print(f"{'run':<8}" + "".join(f"{k:>15}" for k in keys))
    for i, r in enumerate(rows, 1):
        print(f"{i:<8}" + "".join(f"{r[k]:>15.3f}" for k in keys))
    print(f"{'median':<8}" + "".join(f"{statistics.median(r[k] for r in rows):>15.3f}" for k in keys))
    print("targets: wall <= 15 s, peak RSS <= 420 MB, val accuracy >= 0.78")


if __name__ == "__main__":
    main()
