"""The apoptosis family end to end: real CLI runs on a slice of the Shakespeare corpus.

A run records its deaths and births as structural events, keeps a lineage
consistent with the final model, writes text samples, handles a domain shift,
rejects bad input with one line (exit 2), and resumes exactly after SIGKILL
with a model whose shapes changed since it started.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pytest
from _char import TINY_APOPTOSIS, kill_after_evaluations
from _e2e import read_json, read_jsonl, run, run_dir_in

TINY = [*TINY_APOPTOSIS, "--metrics_port", "0", "--console", "off", "--threads", "1", "--seed", "5"]


def _lineage(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "artifacts" / "lineage.csv") as f:
        return list(csv.DictReader(f))


def test_a_run_records_events_lineage_and_samples(tmp_path: Path) -> None:
    r = run([*TINY, "--max_iters", "60", "--layer_pattern", "ffn_and_attention", "--output_dir", str(tmp_path)],
            timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = run_dir_in(tmp_path)
    assert run_dir is not None
    events = read_jsonl(run_dir / "events.jsonl")
    changes = [e for e in events if e["event"] == "StructuralChange"]
    kinds = Counter((e["kind"], e["layer"].rsplit(".", 1)[-1]) for e in changes)
    # Rounds at steps 10..60 in every group (attention and FFN), deaths then regrowth.
    assert kinds[("apoptosis", "mlp")] >= 8 and kinds[("apoptosis", "attn")] >= 8, kinds
    assert kinds[("regrow", "mlp")] == kinds[("apoptosis", "mlp")], kinds
    assert {e["kind"] for e in events if e["event"] == "StructuralImpact"} >= {"apoptosis", "regrow"}
    # The lineage holds every unit ever alive; the alive ones match the final model.
    rows = _lineage(run_dir)
    units = read_json(run_dir / "artifacts" / "units.json")
    alive = Counter(row["group"] for row in rows if row["death_step"] == "-1")
    assert dict(alive) == units
    by_id = {(row["group"], row["unit_id"]): row for row in rows}
    children = [row for row in rows if row["parent_id"] != "-1"]
    assert children and len(rows) == sum(units.values()) + sum(int(row["death_step"]) >= 0 for row in rows)
    for row in children:
        parent = by_id[(row["group"], row["parent_id"])]
        assert int(row["generation"]) == int(parent["generation"]) + 1
        assert int(row["birth_step"]) > int(parent["birth_step"])
    # Deaths in the lineage equal the deaths the events report.
    died = sum(e["units"] for e in changes if e["kind"] == "apoptosis")
    assert died == sum(int(row["death_step"]) >= 0 for row in rows)
    # Text samples: the phase end always, in the results, the artifacts and TensorBoard's folder.
    samples = read_jsonl(run_dir / "text_samples.jsonl")
    assert samples[-1]["tag"] == "phase_end/train" and len(samples[-1]["text"]) == 40
    assert "phase_end/train" in (run_dir / "artifacts" / "samples.txt").read_text()
    m = read_json(run_dir / "metrics.json")["metrics"]
    assert math.isclose(m["val_perplexity"], math.exp(m["val_loss"]), rel_tol=1e-6)
    assert m["tokens_per_second"] > 0
    assert (run_dir / "artifacts" / "curves.png").stat().st_size > 1000


def test_a_domain_shift_trains_corpus_b_and_measures_forgetting(tmp_path: Path) -> None:
    poems = tmp_path / "poems.txt"
    poems.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 120)
    r = run([*TINY, "--max_iters", "20", "--shift_iters", "20", "--shift_file", str(poems),
             "--apoptosis_strategy", "none", "--output_dir", str(tmp_path / "out")], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = run_dir_in(tmp_path / "out")
    assert run_dir is not None
    hist = read_jsonl(run_dir / "history.jsonl")
    assert [h["phase"] for h in hist] == ["train", "train", "shift", "shift"]
    assert all("val_loss_a" in h for h in hist[2:])
    # The repeated couplet is learned fast: corpus B's loss falls below corpus A's.
    assert hist[-1]["val_loss"] < hist[-1]["val_loss_a"]
    tags = [s["tag"] for s in read_jsonl(run_dir / "text_samples.jsonl")]
    assert tags == ["phase_end/train", "phase_end/shift"]
    assert read_json(run_dir / "manifest.json")["corpora"]["b"]["source"].endswith("poems.txt")


@pytest.mark.parametrize("flags, key", [
    (["--layer_rates", "blocks.9.mlp=1"], "layer_rates"),
    (["--text_file", "/nonexistent/corpus.txt"], "text_file"),
    (["--n_embd", "30", "--n_head", "4"], "n_embd"),
    (["--block_size", "100000"], "block_size"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, flags: list[str], key: str) -> None:
    r = run([*TINY, "--max_iters", "20", *flags, "--output_dir", str(tmp_path)], timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_sigkill_mid_fade_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Hybrid turnover changes shapes (births before the fading units go) and keeps fades in flight."""
    flags = [*TINY, "--max_iters", "80", "--apoptosis_strategy", "hybrid", "--fade_steps", "15",
             "--layer_pattern", "ffn_and_attention", "--no_tensorboard"]
    a_dir, b_dir, ckpt = kill_after_evaluations(flags, tmp_path, 4)
    assert 3 <= ckpt["trainer"]["epoch"] < 8
    groups = ckpt["experiment"]["mechanism"]["groups"]
    assert any(any(s >= 0 for s in g["fade_start"]) for g in groups.values()), "no fade in flight at the checkpoint"
    ma, mb = read_json(a_dir / "metrics.json")["metrics"], read_json(b_dir / "metrics.json")["metrics"]
    for key in ("val_loss", "train_loss", "grad_norm", "steps", "parameters", "val_perplexity"):
        assert math.isclose(ma[key], mb[key], rel_tol=0, abs_tol=1e-7), (key, ma[key], mb[key])
    for name in ("lineage.csv", "units.json", "samples.txt"):
        assert (a_dir / "artifacts" / name).read_text() == (b_dir / "artifacts" / name).read_text(), name
