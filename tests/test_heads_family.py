"""The heads family end to end: real CLI runs on a slice of the Shakespeare corpus.

Warm-up stabilisation gates every decision; pruning rounds record their
scores, a text sample and structural events, and stop at the quality limit
(rolled back); cloning leaves the function unchanged; a pruned model resumes
exactly after SIGKILL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from _char import TINY_HEADS, kill_after_evaluations
from _e2e import read_json, read_jsonl, run, run_dir_in

TINY = [*TINY_HEADS, "--metrics_port", "0", "--console", "off", "--threads", "1", "--seed", "5"]


def _run(tmp_path: Path, *flags: str) -> Path:
    r = run([*TINY, *flags, "--output_dir", str(tmp_path)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = run_dir_in(tmp_path)
    assert run_dir is not None
    return run_dir


def test_pruning_rounds_start_after_warm_up_and_record_their_scores(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "--max_iters", "150", "--prune_fraction", "0.25", "--quality_tolerance", "1.0")
    events = read_jsonl(run_dir / "events.jsonl")
    (stable,) = [e for e in events if e["event"] == "Milestone" and e["name"] == "warmup_stable"]
    decisions = read_jsonl(run_dir / "decisions.jsonl")
    assert decisions and all(d["step"] >= stable["step"] for d in decisions)
    assert [d["step"] for d in decisions] == sorted({d["step"] for d in decisions})
    first = decisions[0]["payload"]
    assert set(first["importance"]) == {"blocks.0.attn", "blocks.1.attn"}
    for layer, s in first["importance"].items():  # per-layer L2-normalised importance, entropy per head
        assert len(s["importance"]) == 4 and math.isclose(math.hypot(*s["importance"]), 1.0, rel_tol=1e-4)
        assert all(0 <= e <= math.log(16) + 1e-6 for e in s["entropy"])
    # Two heads per round (25% of 8): each the least important of the heads alive then.
    removed = [(c["layer"], h) for c in first["changes"] for h in c["pruned_heads"]]
    assert len(removed) == 2
    ranked = sorted((v, a, h) for a, s in first["importance"].items() for h, v in enumerate(s["importance"]))
    assert sorted(removed) == sorted((a, h) for _, a, h in ranked[:2])
    changes = [e for e in events if e["event"] == "StructuralChange"]
    assert sum(e["units"] for e in changes if e["kind"] == "head_prune") == 8 - sum(
        read_json(run_dir / "artifacts" / "heads.json").values())
    tags = [s["tag"] for s in read_jsonl(run_dir / "text_samples.jsonl")]
    assert tags.count("after/head_prune") == len(decisions) and tags[-1] == "phase_end/train"
    assert read_jsonl(run_dir / "history.jsonl")[-1]["step"] == 150
    assert (run_dir / "artifacts" / "importance.png").stat().st_size > 1000
    assert json.loads((run_dir / "artifacts" / "decisions.json").read_text())[0]["round"] == 1


def test_a_breach_is_rolled_back_and_stops_pruning(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "--max_iters", "150", "--prune_fraction", "0.5", "--quality_tolerance", "0")
    decisions = read_jsonl(run_dir / "decisions.jsonl")
    assert len(decisions) == 1, decisions  # the breach stops pruning
    d = decisions[0]["payload"]
    assert d["outcome"] == "rolled_back" and d["quality_ratio"] > 1.0
    assert d["heads_after"] == d["heads_before"] == {"blocks.0.attn": 4, "blocks.1.attn": 4}
    m = read_json(run_dir / "metrics.json")["metrics"]
    events = read_jsonl(run_dir / "events.jsonl")
    assert not [e for e in events if e["event"] == "StructuralChange"]  # nothing changed in the end
    assert "pruning stops" in (run_dir / "run.log").read_text()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    breaches = [s["value"] for s in samples if s["metric"] == "heads_quality_breaches_total"]
    assert breaches[0] == 0 and breaches[-1] == 1 and m["val_loss"] > 0
    # The run continues with the restored model: its ratio is back at the limit (no page for the designed stop).
    ratios = [s["value"] for s in samples if s["metric"] == "heads_quality_ratio"]
    assert ratios[-1] == 1.0 and d["continued_quality_ratio"] == 1.0


def test_cloning_keeps_the_function_and_adds_heads(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "--max_iters", "120", "--head_mode", "clone", "--clone_noise", "0")
    decisions = read_jsonl(run_dir / "decisions.jsonl")
    assert decisions
    for d in decisions:
        p = d["payload"]
        assert math.isclose(p["val_loss_after"], p["val_loss_before"], rel_tol=0, abs_tol=1e-5), p
        assert sum(p["heads_after"].values()) == sum(p["heads_before"].values()) + 1
    heads = read_json(run_dir / "artifacts" / "heads.json")
    assert sum(heads.values()) == 8 + len(decisions)


def test_sigkill_after_pruning_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    flags = [*TINY, "--max_iters", "150", "--prune_fraction", "0.25", "--quality_tolerance", "1.0",
             "--no_tensorboard"]
    # Rounds run from ~step 50 every 30 steps: ten evaluations hold at least one in a checkpoint.
    a_dir, b_dir, ckpt = kill_after_evaluations(flags, tmp_path, 10)
    assert sum(ckpt["experiment"]["pruned"].values()) > 0, "killed before any pruning reached a checkpoint"
    ma, mb = read_json(a_dir / "metrics.json")["metrics"], read_json(b_dir / "metrics.json")["metrics"]
    for key in ("val_loss", "train_loss", "grad_norm", "steps", "parameters", "val_perplexity"):
        assert math.isclose(ma[key], mb[key], rel_tol=0, abs_tol=1e-7), (key, ma[key], mb[key])
    for name in ("heads.json", "samples.txt"):
        assert (a_dir / "artifacts" / name).read_text() == (b_dir / "artifacts" / name).read_text(), name
    # Every decision with its scores, identical but for its wall time.
    da, db = (json.loads((d / "artifacts" / "decisions.json").read_text()) for d in (a_dir, b_dir))
    timing = ("seconds", "cost_steps")
    assert [{k: v for k, v in d.items() if k not in timing} for d in da] == \
        [{k: v for k, v in d.items() if k not in timing} for d in db]
    assert len(da) >= 2
