#!/usr/bin/env python3
"""Telemetry overhead: the same seeded training with telemetry off and on.

Runs the default experiment several times in ONE process, alternating
"off" (no metrics endpoint, no TensorBoard, no console) and "on" (every default
sink: Prometheus endpoint, TensorBoard, plain console, results), and prints
steps/s for both, their ratio, and the time to serve one /metrics scrape of a
finished run's registry over real HTTP.

    python benchmarks/telemetry_overhead.py [--reps 5] [--epochs 80]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli.wiring import execute_run  # noqa: E402
from engine.config import build_config  # noqa: E402


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(on: bool, out: Path, warm: int, adapt: int) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second of the whole process) of one run.

    CPU time counts every thread (sink workers, the HTTP server) and is far
    less sensitive than wall time to other load on a shared machine.
    """
    flat = {"output_dir": str(out), "warm_up_epochs": warm, "adaptation_epochs": adapt,
            "metrics_port": free_port() if on else 0, "tensorboard": on,
            "console": "plain" if on else "off", "metrics_linger": 0}
    cfg = build_config(flat)
    cpu = time.process_time()
    outcome = execute_run(cfg, out / f"run_{time.monotonic_ns()}")
    cpu = time.process_time() - cpu
    steps = outcome.metrics["steps"]
    return steps / outcome.metrics["wall_seconds"], steps / cpu


def scrape_ms(n: int = 50) -> float:
    """Median milliseconds to serve /metrics for a registry holding a full run's series."""
    from engine.sinks.prometheus import PrometheusSink
    from engine.telemetry.bus import EventBus
    from engine.training.trainer import Trainer
    from engine.registry import get_experiment
    import torch

    cfg = build_config({"warm_up_epochs": 2, "adaptation_epochs": 2, "metrics_port": 0})
    exp = get_experiment("seeds").factory(cfg, torch.device("cpu"))
    bus = EventBus()
    sink = PrometheusSink(free_port())
    bus.attach(sink)
    with tempfile.TemporaryDirectory() as d:
        Trainer(exp, bus, "bench", Path(d), cfg.to_dict(), checkpoint_every=0).run()
    url = f"http://127.0.0.1:{sink.port}/metrics"
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=5).read()
        times.append((time.perf_counter() - t) * 1000)
    sink.close()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(f"scrape: {statistics.median(times):.2f} ms median over {n} ({series} series, {len(body)} bytes)")
    return statistics.median(times)


def main() -> None:
    """Alternate off/on runs and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warm_up_epochs", type=int, default=30)
    ap.add_argument("--adaptation_epochs", type=int, default=50)
    args = ap.parse_args()
    wall: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as d:
        one_run(False, Path(d), 2, 2)  # warm-up: first-call overheads out of the measurement
        for _ in range(args.reps):
            for mode in ("off", "on"):
                w, c = one_run(mode == "on", Path(d), args.warm_up_epochs, args.adaptation_epochs)
                wall[mode].append(w)
                cpu[mode].append(c)
    print(f"{'telemetry':<10} {'steps/wall-s':>13} {'min':>8} {'max':>8} {'steps/CPU-s':>13} {'min':>8} {'max':>8}")
    for mode in ("off", "on"):
        w, c = wall[mode], cpu[mode]
        print(f"{mode:<10} {statistics.median(w):>13.1f} {min(w):>8.1f} {max(w):>8.1f}"
              f" {statistics.median(c):>13.1f} {min(c):>8.1f} {max(c):>8.1f}")
    # Each "on" run is compared with the "off" run just before it: adjacent runs
    # share the machine's momentary speed, which on a shared VM varies more
    # than the effect being measured.
    for name, d in (("wall", wall), ("CPU", cpu)):
        pairs = sorted(on / off for on, off in zip(d["on"], d["off"]))
        q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
        print(f"ratio on/off ({name}): median of paired ratios {statistics.median(pairs):.3f}"
              f" (IQR {q1:.3f}-{q3:.3f}); ratio of medians "
              f"{statistics.median(d['on']) / statistics.median(d['off']):.3f}")
    print(f"(goal >= 0.97; {args.reps} reps each, alternating off/on in one process)")
    scrape_ms()


if __name__ == "__main__":
    main()
