"""The metric catalog: every exported metric is declared here, once.

Sinks, alert rules, dashboards and the README's metric table all take their
names from this list, and tests tie them together. Naming follows Prometheus
conventions: one prefix, base units as suffixes, counters end in ``_total``,
bounded labels only (seed ids, layer names and attention-head slots, a few per
layer and capped by the run's config; never a neuron index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

PREFIX = "plasticity"
#: Quantiles exported for per-neuron signals of each layer.
NEURON_QUANTILES = ("0", "0.25", "0.5", "0.75", "1")
#: Buckets of the relative change of the quality figure after a structural change
#: ((after - before) / |before|; positive is worse).
IMPACT_BUCKETS = (-0.2, -0.05, -0.02, 0.02, 0.05, 0.2, 1.0)
#: Epoch-duration histogram buckets in seconds.
EPOCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: full name, type, unit, label names and help text.

    ``families`` are the experiment families that set it (empty: every family).
    """

    name: str
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()
    families: tuple[str, ...] = ()

    def applies_to(self, experiment: str) -> bool:
        """Whether a run of ``experiment`` sets this metric."""
        return not self.families or experiment in self.families


def _m(short: str, kind: Kind, unit: str, labels: tuple[str, ...], help: str, **kw: Any) -> MetricSpec:
    return MetricSpec(f"{PREFIX}_{short}", kind, unit, labels, help, **kw)


R = ("run_id",)
S = ("run_id", "seed", "layer")
L = ("run_id", "layer")
C = ("run_id", "class")
Q = ("run_id", "layer", "quantile")
H = ("run_id", "layer", "head")
SEEDS, NDL, LOP, APO, HEADS = "seeds", "neurogenesis", "plasticity", "apoptosis", "heads"
#: Families on the char-level transformer: they share the language-model metrics.
LM = (APO, HEADS)
#: Structural-change kinds each family makes (bounds the ``kind`` label's values).
FAMILY_KINDS: dict[str, tuple[str, ...]] = {
    SEEDS: ("germinate", "blend_start", "blend_end", "fossilize", "cull", "seed_rollback"),
    NDL: ("grow",), LOP: ("replace",), APO: ("apoptosis", "regrow", "grow"), HEADS: ("head_prune", "head_clone")}

CATALOG: tuple[MetricSpec, ...] = (
    _m("build_info", "gauge", "", ("version", "python_version", "torch_version"), "Engine build; value is always 1."),
    _m("run_info", "gauge", "", ("run_id", "experiment", "device", "config_hash"), "The run served by this endpoint (run_id is unique per launch; config_hash groups launches of one config); value is always 1."),
    _m("run_status", "gauge", "", ("run_id", "status"), "1 for the run's current status (running, finished, diverged, interrupted, failed), else 0."),
    _m("training_phase", "gauge", "", ("run_id", "phase"), "1 for the current training phase, else 0."),
    _m("steps_total", "counter", "", R, "Optimisation steps completed."),
    _m("epochs_total", "counter", "", R, "Epochs completed."),
    _m("last_step_timestamp_seconds", "gauge", "seconds", R, "Unix time of the last completed step (heartbeat)."),
    _m("train_loss", "gauge", "", R, "Mean training loss of the last epoch."),
    _m("val_loss", "gauge", "", R, "Validation loss after the last epoch."),
    _m("val_accuracy_ratio", "gauge", "ratio", R, "Validation accuracy after the last epoch (0-1).", families=(SEEDS, LOP)),
    _m("best_val_accuracy_ratio", "gauge", "ratio", R, "Best validation accuracy so far (0-1).", families=(SEEDS, LOP)),
    _m("epoch_duration_seconds", "histogram", "seconds", R, "Wall time per epoch.", buckets=EPOCH_BUCKETS),
    _m("samples_per_second", "gauge", "", R, "Training throughput of the last epoch."),
    _m("grad_norm", "gauge", "", R, "Mean L2 norm of the gradient over the last epoch's steps."),
    _m("learning_rate", "gauge", "", R, "Current learning rate of the main optimizer."),
    _m("nonfinite_loss_steps_total", "counter", "", R, "Steps whose loss was NaN or infinite."),
    _m("loss_baseline_ratio", "gauge", "ratio", R, "Last epoch's watched loss (mean train loss; neurogenesis: validation loss) over its baseline, the lower of the loss at initialisation and the best epoch so far."),
    _m("loss_exploding_evaluations", "gauge", "", R, "Consecutive evaluations whose mean train loss was above explode_factor times its baseline."),
    _m("loss_exploding_patience_evaluations", "gauge", "", R, "Exploding evaluations in a row that mark the loss as exploding (explode_patience; 0 = off)."),
    _m("rollbacks_total", "counter", "", R, "Returns to the last good checkpoint after a non-finite loss (on_diverge rollback)."),
    _m("loss_explosions_total", "counter", "", R, "Times the loss became exploding (explode_patience exploding evaluations in a row) in this process."),
    _m("training_progress_ratio", "gauge", "ratio", R, "Epochs completed over epochs planned (0-1)."),
    _m("model_parameters", "gauge", "", R, "Number of parameters in the model, seeds included."),
    _m("plateau_epochs", "gauge", "", R, "Consecutive adaptation epochs without val-loss improvement.", families=(SEEDS,)),
    _m("plateau_patience_epochs", "gauge", "", R, "Plateau length that triggers germination.", families=(SEEDS,)),
    _m("germinations_total", "counter", "", R, "Seeds germinated.", families=(SEEDS,)),
    _m("germination_accuracy_threshold_ratio", "gauge", "ratio", R, "Germination happens only while val accuracy is below this (0-1).", families=(SEEDS,)),
    _m("seed_state", "gauge", "", S + ("state",), "1 for the seed's current lifecycle state, else 0.", families=(SEEDS,)),
    _m("seed_alpha_ratio", "gauge", "ratio", S, "Blending weight of the seed (0 dormant, 1 fully active).", families=(SEEDS,)),
    _m("seed_drift_ratio", "gauge", "ratio", S, "Interface drift since blending began: 1 - mean cosine (0-1).", families=(SEEDS,)),
    _m("seed_health", "gauge", "", S, "Activation variance at the seed's interface (low = unhealthy).", families=(SEEDS,)),
    _m("seed_train_loss", "gauge", "", S, "Reconstruction loss of the seed's child network.", families=(SEEDS,)),
    _m("seed_transitions_total", "counter", "", ("run_id", "to_state"), "Seed lifecycle transitions by target state.", families=(SEEDS,)),
    _m("layer_units", "gauge", "", L, "Number of units in the layer."),
    _m("layer_dead_units", "gauge", "", L, "Units of the layer with zero activation on every validation sample."),
    _m("neuron_activation_quantile", "gauge", "", Q, "Quantiles over the layer's units of mean |activation| on validation data."),
    _m("neuron_activation_topk", "gauge", "", L + ("rank",), "Largest per-unit mean |activation| values of the layer by rank slot."),
    _m("sink_errors_total", "counter", "", ("run_id", "sink"), "Telemetry sink failures (the sink is then disabled)."),
    # -- structural-change accounting: every family --------------------------------
    _m("structural_changes_total", "counter", "", ("run_id", "kind", "layer"), "Structural changes (germinate, blend_start, blend_end, fossilize, cull, seed_rollback, grow, replace, ...) by kind and layer."),
    _m("structural_impact_change_ratio", "histogram", "ratio", ("run_id", "kind"), "Relative change of the family's quality figure (e.g. val loss; positive = worse) from just before a structural change to its settle window's end.", buckets=IMPACT_BUCKETS),
    _m("structural_impact_last_change_ratio", "gauge", "ratio", ("run_id", "kind", "layer"), "Relative change of the quality figure caused by the latest settled structural change of this kind and layer (positive = worse)."),
    _m("structural_impact_info", "gauge", "", ("run_id", "kind", "layer", "quality_before", "quality_after"), "The latest settled structural change of each kind and layer, with its quality figure before and after as labels (4 significant digits; one series per kind and layer at a time, for annotations); value is always 1."),
    _m("structural_harmful_total", "counter", "", ("run_id", "kind"), "Settled structural changes that made the quality figure worse by more than impact_tolerance."),
    _m("structural_harmful_streak", "gauge", "", R, "Harmful structural changes since the last one that improved the quality figure."),
    _m("structural_harmful_streak_limit", "gauge", "", R, "Harmful streak that raises StructuralChangesHurting (impact_streak; 0 = off)."),
    _m("structural_net_change_ratio", "gauge", "ratio", R, "Sum of the quality figure's changes over all settled structural changes' windows, relative to its value before the first (positive = worse)."),
    _m("structural_net_change_limit_ratio", "gauge", "ratio", R, "Net worsening that raises StructuralChangesHurting (impact_net_limit; 0 = off)."),
    _m("device_memory_used_bytes", "gauge", "bytes", ("run_id", "device"), "Memory in use on the device (CUDA allocated, or process RSS on CPU)."),
    _m("device_memory_limit_bytes", "gauge", "bytes", ("run_id", "device"), "Memory capacity of the device (CUDA total, or physical RAM on CPU)."),
    # -- neurogenesis (Draelos et al. 2017): class-incremental autoencoder ------
    _m("ndl_stage", "gauge", "", R, "Index of the current class stage (0 = base training).", families=(NDL,)),
    _m("ndl_current_class", "gauge", "", R, "Label of the class being learned (-1 during base training).", families=(NDL,)),
    _m("ndl_class_reconstruction_error", "gauge", "", C, "Held-out reconstruction MSE of each class learned so far.", families=(NDL,)),
    _m("ndl_class_baseline_error", "gauge", "", C, "Held-out reconstruction MSE of the class right after it was learned.", families=(NDL,)),
    _m("ndl_layer_reconstruction_error", "gauge", "", L, "Mean reconstruction MSE through the level on the current class's samples.", families=(NDL,)),
    _m("ndl_layer_threshold", "gauge", "", L, "Outlier threshold of the level's reconstruction error (from base-trained statistics).", families=(NDL,)),
    _m("ndl_outlier_fraction_ratio", "gauge", "ratio", L, "Fraction of the current class's samples above the level's threshold (0-1).", families=(NDL,)),
    _m("ndl_outlier_fraction_limit_ratio", "gauge", "ratio", R, "Outlier fraction above which a level grows (0-1).", families=(NDL,)),
    _m("ndl_neurons_added_total", "counter", "", L, "Neurons added to the level by neurogenesis.", families=(NDL,)),
    _m("ndl_stage_neurons_added", "gauge", "", L, "Neurons added to the level during the current stage.", families=(NDL,)),
    _m("ndl_stage_growth_limit", "gauge", "", L, "Most neurons the level may add in one stage (the growth cap).", families=(NDL,)),
    _m("ndl_replay_samples_total", "counter", "", R, "Samples generated by intrinsic replay.", families=(NDL,)),
    # -- loss of plasticity: continual backprop, ReDo, rank and dormancy -------
    _m("stream_task", "gauge", "", R, "Index of the current task of the stream.", families=(LOP,)),
    _m("online_loss", "gauge", "", R, "Mean online loss over the last task (each sample scored before the update).", families=(LOP,)),
    _m("online_accuracy_ratio", "gauge", "ratio", R, "Online accuracy over the last task (0-1; classification streams).", families=(LOP,)),
    _m("layer_effective_rank", "gauge", "", L, "Effective rank of the layer's probe activations (exp entropy of normalised singular values).", families=(LOP,)),
    _m("layer_stable_rank", "gauge", "", L, "Stable rank of the layer's probe activations (sum s^2 / max s^2).", families=(LOP,)),
    _m("layer_approximate_rank", "gauge", "", L, "Singular values holding 99% of the probe activations' energy.", families=(LOP,)),
    _m("layer_dead_ratio", "gauge", "ratio", L, "Fraction of the layer's units that are zero on every probe sample (0-1).", families=(LOP,)),
    _m("layer_dormant_ratio", "gauge", "ratio", L, "Fraction of the layer's units whose ReDo score is <= tau (0-1).", families=(LOP,)),
    _m("layer_weight_abs_mean", "gauge", "", L, "Mean absolute incoming weight of the layer.", families=(LOP,)),
    _m("layer_grad_norm", "gauge", "", L, "L2 norm of the layer's weight gradient, averaged since the last diagnostics.", families=(LOP,)),
    _m("units_replaced_total", "counter", "", L, "Units re-initialised by continual backprop or ReDo.", families=(LOP,)),
    _m("diagnostics_seconds_total", "counter", "seconds", R, "Wall time spent computing probe diagnostics.", families=(LOP,)),
    # -- language models (char-level transformers): generic to every LM family --
    _m("val_perplexity", "gauge", "", R, "Validation perplexity (exp of the validation loss) after the last evaluation.", families=LM),
    _m("tokens_per_second", "gauge", "", R, "Training tokens per second over the last evaluation interval.", families=LM),
    _m("text_samples_total", "counter", "", R, "Text samples generated from the model (at phase ends and after structural events).", families=LM),
    # -- apoptosis: FFN units and attention value channels die, regrow and grow --
    _m("apoptosis_units_born_total", "counter", "", L, "Units born in the layer (regrowth or growth).", families=(APO,)),
    _m("apoptosis_units_died_total", "counter", "", L, "Units removed from the layer by apoptosis.", families=(APO,)),
    _m("apoptosis_fading_units", "gauge", "", L, "Units of the layer whose output is being ramped to zero before removal.", families=(APO,)),
    _m("apoptosis_unit_utility_quantile", "gauge", "", Q, "Quantiles over the layer's alive units of their bias-corrected running utility.", families=(APO,)),
    _m("apoptosis_unit_age_steps", "gauge", "", Q, "Quantiles over the layer's alive units of their age in training steps.", families=(APO,)),
    _m("apoptosis_max_generation", "gauge", "", L, "Deepest lineage generation alive in the layer (0 = only original units).", families=(APO,)),
    _m("apoptosis_death_storm_limit", "gauge", "", R, "Deaths per training step (summed over layers, averaged over one minute) above which ApoptosisDeathStorm fires (0 = off).", families=(APO,)),
    _m("perplexity_jump_ratio", "gauge", "ratio", R, "Validation perplexity at the first evaluation after the latest structural event over the perplexity at the evaluation just before it.", families=LM),
    _m("perplexity_jump_limit_ratio", "gauge", "ratio", R, "Perplexity ratio above which a structural event counts as a perplexity jump (0 = off).", families=LM),
    _m("perplexity_jumps_total", "counter", "", R, "Structural events after which the validation perplexity ratio exceeded its limit.", families=LM),
    # -- heads: attention heads pruned by importance or cloned (Net2Net) after warm-up --
    _m("heads_alive", "gauge", "", L, "Attention heads in the layer.", families=(HEADS,)),
    _m("head_importance_ratio", "gauge", "ratio", H, "Importance of the head at the last decision round: |dL/d gate| L2-normalised over the layer's heads (0-1; NaN for a slot without a head).", families=(HEADS,)),
    _m("head_attention_entropy_nats", "gauge", "", H, "Mean entropy of the head's attention distributions at the last decision round, in nats (NaN for a slot without a head).", families=(HEADS,)),
    _m("heads_pruned_total", "counter", "", L, "Attention heads removed from the layer by decision rounds.", families=(HEADS,)),
    _m("heads_cloned_total", "counter", "", L, "Attention heads added to the layer by cloning an important head (Net2Net).", families=(HEADS,)),
    _m("heads_decision_rounds_total", "counter", "", R, "Decision rounds run (each scores every head, then prunes or clones).", families=(HEADS,)),
    _m("heads_warmup_stable", "gauge", "", R, "1 once warm-up stabilisation of the validation loss was detected (no decision before it), else 0.", families=(HEADS,)),
    _m("heads_stable_step", "gauge", "", R, "Training step at which warm-up stabilisation was detected (-1 before).", families=(HEADS,)),
    _m("heads_quality_ratio", "gauge", "ratio", R, "Validation loss of the model the run continues with after the last decision round (a rolled-back round: the restored model's) over the unpruned reference validation loss.", families=(HEADS,)),
    _m("heads_quality_limit_ratio", "gauge", "ratio", R, "Quality ratio a decision round may not exceed: 1 + the allowed relative worsening of the validation loss.", families=(HEADS,)),
    _m("heads_quality_breaches_total", "counter", "", R, "Decision rounds that left the validation loss above the quality limit (rolled back or not).", families=(HEADS,)),
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in CATALOG}


def metric(short: str) -> str:
    """Full metric name for a short name, checked against the catalog."""
    name = f"{PREFIX}_{short}"
    if name not in BY_NAME:
        raise KeyError(f"metric {name!r} is not in the catalog")
    return name


def exposition_names(spec: MetricSpec) -> tuple[str, ...]:
    """Series names as they appear in the text format (histograms expand)."""
    if spec.kind == "histogram":
        # prometheus_client exports no _sum for a histogram with negative buckets
        # (a sum of signed values is not a valid OpenMetrics sum).
        if spec.buckets and spec.buckets[0] < 0:
            return (f"{spec.name}_bucket", f"{spec.name}_count")
        return (f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count")
    return (spec.name,)


def series_budget(n_seeds: int, n_layers: int, topk: int, n_sinks: int,
                  experiment: str = "seeds", n_classes: int = 0, n_phases: int = 2, n_heads: int = 0) -> int:
    """Upper bound on series one run of ``experiment`` exports (documented in the README).

    ``n_layers`` counts values of the ``layer`` label (apoptosis: two per block,
    ``blocks.i.mlp`` and ``blocks.i.attn``); ``n_phases`` is the family's number
    of training phases (``done`` is added); ``n_heads`` is the most attention
    heads a layer may hold (the heads family's cap: per-head series are slots
    ``0 .. n_heads - 1`` of every layer).
    """
    from engine.telemetry.events import RUN_STATUSES, SEED_STATES, STRUCTURAL_KINDS

    total = 0
    for m in CATALOG:
        if not m.applies_to(experiment):
            continue
        if m.labels[1:2] == ("kind",):  # at most every kind (and layer) the family changes
            per = len(m.buckets) + len(exposition_names(m)) if m.kind == "histogram" else 1  # +Inf, _sum?, _count
            kinds = len(FAMILY_KINDS.get(experiment, STRUCTURAL_KINDS))
            total += kinds * per * (n_layers if "layer" in m.labels else 1)
        elif m.kind == "histogram":
            total += len(m.buckets) + 3  # buckets, +Inf, _sum, _count
        elif m.name.endswith("seed_state"):
            total += n_seeds * len(SEED_STATES)
        elif m.labels[1:2] == ("seed",):
            total += n_seeds
        elif "head" in m.labels:  # per-head slots of every layer, bounded by the run's head cap
            total += n_layers * n_heads
        elif "quantile" in m.labels:  # per-layer quantiles (activations, unit utility, unit age)
            total += n_layers * len(NEURON_QUANTILES)
        elif m.name.endswith("neuron_activation_topk"):
            total += n_layers * topk
        elif m.labels[-1:] == ("layer",):
            total += n_layers
        elif m.labels[-1:] == ("class",):
            total += n_classes
        elif m.name.endswith("run_status"):
            total += len(RUN_STATUSES)
        elif m.name.endswith("training_phase"):
            total += n_phases + 1
        elif m.name.endswith("seed_transitions_total"):
            total += len(SEED_STATES)
        elif m.name.endswith("sink_errors_total"):
            total += n_sinks
        else:
            total += 1
    return total
