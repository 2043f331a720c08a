#!/usr/bin/env python3
"""Seeds never end worse than their own best: the guard on the anchor's configuration and others.

Runs the ``seeds`` family through the real CLI (one subprocess at a time, so
wall times are comparable) on configurations a user would try, each next to
the same run with ``--seeds_per_layer 0`` (same data, same training seed, the
trunk alone), and prints one row per configuration: final and best val
accuracy, final - best, germinations, seeds fossilized (accepted), rolled
back (made the val loss worse) and culled for not converging, wall time and
peak RSS of the process; then the trunk alone's final/best/wall.

The first row is the anchor morphogenetic engine's own default configuration
(spirals, noise 0.25, 4 turns, trunk 8 x 128, 1 seed per layer, 50 warm-up +
200 adaptation epochs, lr 3e-3; the anchor reports val accuracy 0.78 in 30 s).
``--ablations`` adds the anchor configuration with the guard off and with the
other ways a child can learn the task (the main optimizer at the full learning
rate; its own Adam at shadow_lr), to show what each choice does.

    python benchmarks/seeds_safety.py [--ablations] [--train_seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ANCHOR = ["--problem_type", "spirals", "--noise", "0.25", "--spiral_turns", "4", "--hidden_dim", "128",
          "--num_layers", "8", "--seeds_per_layer", "1", "--warm_up_epochs", "50", "--adaptation_epochs", "200",
          "--lr", "3e-3"]
#: (name, arguments after ANCHOR's): later values of an option win.
CONFIGS: list[tuple[str, list[str]]] = [
    ("anchor: spirals 8x128, 1 seed/layer", []),
    ("anchor, 2 seeds/layer", ["--seeds_per_layer", "2"]),
    ("anchor, 3 seeds/layer", ["--seeds_per_layer", "3"]),
    ("spirals 12x128 (deeper)", ["--num_layers", "12"]),
    ("spirals 4x256 (wider)", ["--num_layers", "4", "--hidden_dim", "256"]),
    ("moons 8x128", ["--problem_type", "moons", "--noise", "0.3"]),
    ("clusters 8x128, 5 centres", ["--problem_type", "clusters", "--n_centers", "5", "--cluster_std", "2.5"]),
    ("default run (spirals 2x16, 2 seeds/layer)", ["--noise", "0.15", "--spiral_turns", "2", "--hidden_dim", "16",
                                                   "--num_layers", "2", "--seeds_per_layer", "2",
                                                   "--warm_up_epochs", "30", "--adaptation_epochs", "50"]),
]
ABLATIONS: list[tuple[str, list[str]]] = [
    ("anchor, children at 1x lr, guard off", ["--blend_tolerance", "10", "--blend_abort", "1000"]),
    ("anchor, children at 0.1x lr (the anchor's)", ["--child_lr_scale", "0.1"]),
    ("anchor, children at 0.1x lr, guard off", ["--child_lr_scale", "0.1", "--blend_tolerance", "10",
                                                "--blend_abort", "1000"]),
    ("anchor, children with own Adam", ["--child_optimizer", "own"]),
    ("anchor, own Adam, guard off", ["--child_optimizer", "own", "--blend_tolerance", "10", "--blend_abort", "1000"]),
]


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], out: Path) -> dict[str, float]:
    """One run: final metrics, seed outcomes from events.jsonl, wall and peak RSS of the process."""
    cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), *args, "--output_dir", str(out),
           "--metrics_port", str(free_port()), "--console", "off"]  # default sinks, as a user runs it
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed ({' '.join(args)}): {proc.stderr.read().decode()[-800:] if proc.stderr else ''}")
    run_dir = next(out.glob("runs/*"))
    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    moves = [e for e in events if e.get("event") == "SeedTransition"]
    to = [e.get("to_state") for e in moves]
    reasons = [e.get("reason", "") for e in moves if e.get("to_state") == "failed"]
    rolled = sum("rolled back" in r for r in reasons)
    return {"final": m["val_accuracy"], "best": m["best_val_accuracy"], "germ": m["germinations"],
            "fossil": float(to.count("fossilized")), "rolled": float(rolled), "culled": float(len(reasons) - rolled),
            "wall": wall, "rss": usage.ru_maxrss / 1024}


def main() -> None:
    """Run every configuration and its trunk-alone twin; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ablations", action="store_true", help="also the guard-off and child-optimizer variants")
    ap.add_argument("--train_seeds", default="0", help="comma-separated training seeds (rows are per seed)")
    ap.add_argument("--only", default="", help="run only configurations whose name contains this")
    args = ap.parse_args()
    configs = CONFIGS + (ABLATIONS if args.ablations else [])
    configs = [c for c in configs if args.only in c[0]]
    head = (f"{'configuration':<44} {'seed':>4} {'final':>6} {'best':>6} {'f-b':>6} {'germ':>4} {'foss':>4} "
            f"{'rollb':>5} {'cull':>4} {'wall s':>6} {'RSS MB':>6} | {'trunk final':>11} {'best':>6} {'wall s':>6}")
    print(head)
    print("-" * len(head))
    for name, extra in configs:
        for seed in [int(s) for s in args.train_seeds.split(",")]:
            base = [*ANCHOR, *extra, "--seed", str(seed)]
            with tempfile.TemporaryDirectory() as d:
                r = run(base, Path(d) / "seeds")
                b = run([*base, "--seeds_per_layer", "0"], Path(d) / "trunk") if "guard off" not in name \
                    and "children" not in name else None
            trunk = f"{b['final']:>11.4f} {b['best']:>6.4f} {b['wall']:>6.1f}" if b else f"{'(as above)':>11}"
            print(f"{name:<44} {seed:>4} {r['final']:>6.4f} {r['best']:>6.4f} {r['final'] - r['best']:>+6.3f} "
                  f"{r['germ']:>4.0f} {r['fossil']:>4.0f} {r['rolled']:>5.0f} {r['culled']:>4.0f} {r['wall']:>6.1f} "
                  f"{r['rss']:>6.0f} | {trunk}", flush=True)


if __name__ == "__main__":
    main()
