"""Config shared by the character-level language-model families (apoptosis; heads later).

Defaults are nanoGPT's CPU configuration for Shakespeare characters (4 layers,
4 heads, width 128, block 64, batch 12, 2000 iterations, AdamW with lr 1e-3
decaying to 1e-4 after 100 warm-up steps, beta2 0.99, weight decay 0.1,
gradient clipping 1.0, dropout 0).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from engine.config import Section
from engine.data.text import TextDataConfig
from engine.errors import ConfigError


class CharLMConfig(Section):
    """Data, model, schedule, evaluation and sampling of a char-level transformer run."""

    text: TextDataConfig = Field(default_factory=TextDataConfig)
    n_layer: int = Field(4, ge=1, le=64, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=64, description="Attention heads per block.")
    n_embd: int = Field(128, ge=2, le=8192, description="Model width (a multiple of n_head).")
    block_size: int = Field(64, ge=2, le=8192, description="Context length in characters.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on embeddings, attention and residual outputs.")
    max_iters: int = Field(2000, ge=1, le=10**8, description="Training steps on corpus A (phase train).")
    shift_iters: int = Field(
        0, ge=0, le=10**8, description="Training steps on corpus B after corpus A (phase shift, a domain-shift "
        "stream; 0 = no shift). The learning-rate schedule restarts its warm-up and cosine for the shift.")
    eval_every: int = Field(100, ge=1, le=10**8, description="Steps between evaluations (one epoch).")
    eval_iters: int = Field(20, ge=1, le=10**5, description="Validation batches per evaluation (a fixed set).")
    warmup_iters: int = Field(100, ge=0, le=10**8, description="Linear learning-rate warm-up steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay floor as a fraction of lr.")
    weight_decay: float = Field(0.1, ge=0, le=1, description="Weight decay: decoupled (AdamW) on 2-D weights for "
                                "the char-level families, L2 in the optimizer for plasticity.")
    beta2: float = Field(0.99, gt=0, lt=1, description="Adam beta2.")
    grad_clip: float = Field(1.0, ge=0, le=1e6, description="Gradient-norm clip (0 = off).")
    sample_chars: int = Field(200, ge=0, le=100000, description="Characters per text sample (0 = no samples).")
    sample_temperature: float = Field(0.8, gt=0, le=10, description="Sampling temperature of text samples.")
    sample_top_k: int = Field(0, ge=0, le=100000, description="Top-k of text samples (0 = the whole vocabulary).")
    sample_every: int = Field(
        500, ge=1, le=10**8, description="Fewest steps between text samples taken after structural events "
        "(phase ends always get one).")
    perplexity_jump_limit: float = Field(
        1.1, ge=0, le=1e6, description="Validation perplexity right after structural events over the one "
        "just before them above which the events count as a jump (perplexity_jumps_total, "
        "PerplexityJumpAfterChange; 0 = off).")

    @model_validator(mode="after")
    def _consistent(self) -> "CharLMConfig":
        if self.n_embd % self.n_head:
            raise ConfigError("n_embd", self.n_embd, f"a multiple of n_head ({self.n_head})")
        if self.max_iters % self.eval_every or self.shift_iters % self.eval_every:
            raise ConfigError("eval_every", self.eval_every,
                              f"a divisor of max_iters ({self.max_iters}) and shift_iters ({self.shift_iters})")
        return self
