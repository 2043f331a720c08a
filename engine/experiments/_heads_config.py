"""Config of the ``heads`` family: the char-level LM plus head importance, warm-up detection and decisions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.experiments._char_config import CharLMConfig


class HeadsFamilyConfig(CharLMConfig):
    """Char-level transformer plus attention-head plasticity: when to decide, what to do, when to stop."""

    head_mode: Literal["prune", "clone", "none"] = Field(
        "prune", description="Heads: what a decision round does: prune the least important heads, clone the "
        "most important one (Net2Net), or none (importance and entropy are still measured and recorded).")
    importance_batches: int = Field(
        8, ge=1, le=10**4, description="Heads: training batches (fixed windows) importance and entropy are "
        "accumulated over in a decision round.")
    decision_every: int = Field(
        200, ge=1, le=10**8, description="Heads: fewest steps between decision rounds (rounds run at evaluations, "
        "only after warm-up stabilisation).")
    prune_fraction: float = Field(
        0.125, gt=0, le=1, description="Heads: fraction of the heads alive pruned per round (at least one), "
        "globally by layer-normalised importance (Michel et al. 2019).")
    min_heads_per_layer: int = Field(1, ge=1, le=64, description="Heads: a layer never has fewer heads.")
    target_heads: int = Field(
        0, ge=0, le=10**4, description="Heads: stop pruning at this many heads in the model, or cloning at this "
        "many (0 = prune until the quality limit; clone until max_heads_per_layer everywhere).")
    max_heads_per_layer: int = Field(8, ge=1, le=64, description="Heads: cloning never gives a layer more heads.")
    quality_tolerance: float = Field(
        0.05, ge=0, le=10, description="Heads: a pruning round must leave the val loss within this fraction of "
        "the unpruned model's (measured right before the first round) or it is a breach: pruning stops.")
    breach_action: Literal["rollback", "keep"] = Field(
        "rollback", description="Heads: after a breach, restore the heads (weights and optimizer state) the "
        "round removed, or keep the pruned model; pruning stops either way.")
    clone_noise: float = Field(
        0.01, ge=0, le=10, description="Heads: symmetry-breaking noise added to a clone's q/k/v rows "
        "(times each row's std).")
    stable_window: int = Field(
        5, ge=2, le=10**4, description="Heads warm-up detection: evaluations the loss slope is fitted over.")
    stable_threshold: float = Field(
        0.1, gt=0, le=10, description="Heads warm-up detection: relative slope (fraction the loss still "
        "changes over one window) below which an evaluation counts as stable.")
    stable_patience: int = Field(
        2, ge=1, le=10**4, description="Heads warm-up detection: consecutive stable evaluations needed.")


#: The family's defaults for the shared ``train`` section (flags still win): nanoGPT's CPU configuration.
#: A pruning round worsens the validation loss by design, up to quality_tolerance (5%), so
#: structural-change accounting counts a round harmful only beyond that; the net change is off
#: (impact_net_limit 0): the family's own quality ratio against the unpruned model, with its alert
#: HeadsPrunedPastQuality, is the net measure.
TRAIN_DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "batch_size": 12, "impact_tolerance": 0.05,
                  "impact_net_limit": 0.0}
