"""Config of the ``apoptosis`` family: the char-level LM, the mechanism, and the family's watches."""

from __future__ import annotations

from pydantic import Field

from engine.experiments._char_config import CharLMConfig
from engine.mechanisms.apoptosis_config import ApoptosisConfig


class ApoptosisFamilyConfig(CharLMConfig):
    """Char-level transformer (data, model, schedule, samples) plus apoptosis and its alert thresholds."""

    apoptosis: ApoptosisConfig = Field(default_factory=ApoptosisConfig)
    death_storm_factor: float = Field(
        3.0, ge=0, le=1e6, description="Deaths per step (summed over groups, over one minute) above this "
        "multiple of what the schedule can legitimately remove make ApoptosisDeathStorm fire (0 = off).")
    apoptosis_drill_step: int = Field(
        -1, ge=-1, le=10**9, description="Fault drill: at this step kill apoptosis_drill_fraction of every "
        "selected group's most useful units at once, as a broken mechanism would (-1 = off).")
    apoptosis_drill_fraction: float = Field(
        0.5, gt=0, lt=1, description="Fault drill: fraction of each selected group's units killed.")


#: The family's defaults for the shared ``train`` section (flags still win):
#: nanoGPT's CPU Shakespeare configuration (batch 12, AdamW at 1e-3).
#: Structural-change accounting compares validation losses on fixed batches
#: (deterministic); a change is harmful beyond 2% (the shared default).
TRAIN_DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "batch_size": 12}
