"""Config of the ``neurogenesis`` family (Draelos et al. 2017) and class-order helpers."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from engine.config import Section
from engine.data.images import ImageDataConfig
from engine.errors import ConfigError
from engine.mechanisms.plans import INITS


def parse_ints(key: str, text: str, lo: int = 0, hi: int = 10**6, unique: bool = True) -> list[int]:
    """``"1,7"`` -> ``[1, 7]``; a ConfigError names ``key`` for anything else."""
    try:
        out = [int(p) for p in str(text).replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise ConfigError(key, text, "comma-separated integers, e.g. '1,7'") from None
    if not out or any(not lo <= v <= hi for v in out):
        raise ConfigError(key, text, f"one or more comma-separated integers in {lo}..{hi}")
    if unique and len(set(out)) != len(out):
        raise ConfigError(key, text, "each value at most once")
    return out


class NeurogenesisConfig(Section):
    """Data, autoencoder, curriculum, neurogenesis and replay settings."""

    data: ImageDataConfig = Field(default_factory=ImageDataConfig)
    base_classes: str = Field("1,7", description="Classes of the base training set (comma-separated labels).")
    class_order: str = Field("0,2,3,4,5,6,8,9", description="Classes learned one per stage after the base, in order.")
    order_seed: int = Field(-1, ge=-1, le=2**31 - 1,
                            description="-1: class_order as given; else a seeded random permutation of it.")
    hidden_sizes: str = Field("48,32,24,8", description="Encoder widths per level (decoder mirrors them), "
                              "e.g. 200,100,75,20 for 28x28 images.")
    ae_activation: Literal["elu", "sigmoid", "tanh", "relu"] = Field(
        "elu", description="Hidden activation of the autoencoder (the output layer is always sigmoid).")
    heldout_frac: float = Field(0.2, gt=0, lt=1, description="Fraction of every class held out for evaluation.")
    neurogenesis: bool = Field(True, description="Grow neurons per level for each new class (NDL); off: CL fine-tuning.")
    replay: bool = Field(True, description="Intrinsic replay of earlier classes while learning a new one (IR).")
    base_epochs: int = Field(60, ge=1, le=100000, description="Epochs of base training on the base classes.")
    plasticity_epochs: int = Field(10, ge=1, le=100000, description="Epochs of each plasticity phase (outliers only).")
    stability_epochs: int = Field(10, ge=0, le=100000, description="Epochs of each stability phase (new class + replay).")
    finetune_epochs: int = Field(20, ge=0, le=100000,
                                 description="Epochs of whole-network fine-tuning per stage (variants without neurogenesis).")
    outlier_percentile: float = Field(95.0, gt=0, le=100,
                                      description="Th_L = this percentile of base data's per-level reconstruction error.")
    max_outlier_fraction: float = Field(0.2, ge=0, lt=1,
                                        description="A level grows while more than this fraction of new-class samples are outliers.")
    units_per_step: int = Field(2, ge=1, le=10000, description="Neurons added per growth step.")
    growth_cap: int = Field(8, ge=0, le=100000, description="Most neurons one level may add in one stage.")
    growth_init: Literal[INITS] = Field("kaiming", description="Distribution of new neurons' incoming weights.")  # type: ignore[valid-type]
    slow_lr_scale: float = Field(0.01, gt=0, le=1, description="LR multiplier of old decoder weights (plasticity) "
                                 "and of all level weights (stability): the paper's LR/100.")
    new_decoder_lr_scale: float = Field(1.0, gt=0, le=1, description="LR multiplier of the new neurons' decoder "
                                        "columns in plasticity (they start at zero; 0.01 = decoder entirely at LR/100).")
    replay_ratio: float = Field(1.0, ge=0, le=100, description="Replayed samples per earlier class, relative to the "
                                "new class's training samples.")
    stats_source: Literal["replay", "data", "reencode"] = Field(
        "replay", description="Where replay statistics come from. replay (data-free, the default): each "
        "class's top-code mean/covariance is fitted from its own images when it is learned; after every "
        "later stage it is re-fitted from its replayed samples, each code moved by how the stage changed "
        "the encoding of its decoded image. reencode (data-free): re-fitted from the replayed images' new "
        "codes as they are (the autoencoder's projection then compounds over stages). Under both, a "
        "class's training images are never read after its stage (a guard raises). data (stored-data "
        "variant, not intrinsic): after every stage every seen class's stored training images are "
        "re-encoded by the updated network.")
    thresholds: Literal["base", "per_class"] = Field(
        "base", description="Outlier thresholds Th_L. base: the outlier_percentile of the base classes' "
        "through-level error, measured once after base training. per_class: that percentile measured "
        "per class when it is learned (its own images, end of its stage); Th_L is the highest over "
        "learned classes, so thresholds follow the hardest class learned so far.")
    cov_shrinkage: float = Field(0.05, ge=0, le=1, description="Shrinkage of replay covariances towards tr/d * I.")
    eval_every: int = Field(50, ge=0, le=10**7, description="Steps between periodic per-class held-out evaluations (0 off).")

    @model_validator(mode="after")
    def _classes(self) -> "NeurogenesisConfig":
        base = parse_ints("base_classes", self.base_classes)
        order = parse_ints("class_order", self.class_order)
        clash = sorted(set(base) & set(order))
        if clash:
            raise ConfigError("class_order", self.class_order, f"classes disjoint from base_classes (both have {clash})")
        parse_ints("hidden_sizes", self.hidden_sizes, lo=1, unique=False)
        return self

    def base(self) -> list[int]:
        """Base classes as ints."""
        return parse_ints("base_classes", self.base_classes)

    def order(self) -> list[int]:
        """The class order after ``order_seed``."""
        order = parse_ints("class_order", self.class_order)
        if self.order_seed < 0:
            return order
        return [order[i] for i in np.random.default_rng(self.order_seed).permutation(len(order))]

    def sizes(self) -> list[int]:
        """Encoder widths."""
        return parse_ints("hidden_sizes", self.hidden_sizes, lo=1, unique=False)

    def check_data_classes(self, available: list[int]) -> None:
        """ConfigError if a configured class is not in the data."""
        for key, values in (("base_classes", self.base()), ("class_order", self.order())):
            missing = sorted(set(values) - set(available))
            if missing:
                raise ConfigError(key, getattr(self, key), f"classes present in the data ({available}); "
                                  f"missing {missing}")


#: The family's defaults for the shared ``train`` section (flags still win).
#: StructuralChangesHurting is off by default here (impact_streak and
#: impact_net_limit 0): a level grows in the same window as the stage learns a
#: new class and replays the old ones, so the base-class error measured around
#: a growth is the stage's effect, not the growth's (the first stage of a
#: healthy default run raises it ~2.8x before replay brings it down);
#: NdlClassForgetting watches that. The accounting itself (events, metrics,
#: annotations) still runs; set the two limits to page on it.
TRAIN_DEFAULTS = {"optimizer": "adam", "lr": 3e-3, "batch_size": 32, "impact_streak": 0, "impact_net_limit": 0.0}
