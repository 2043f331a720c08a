"""The char-level language-model core shared by the transformer families.

Owns the corpus, the :class:`~engine.models.char_transformer.CharTransformer`,
its optimizer (AdamW with weight decay on 2-D weights only, or SGD), the
warm-up + cosine learning-rate schedule (restarted for a domain shift), fixed
validation batches and text sampling. Families add their mechanisms on top and
keep the experiment protocol; this class never sees the trainer or a sink.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

import torch
from torch import Tensor

from engine.config import RunConfig
from engine.data.text import CharCorpus, load_char_corpus
from engine.experiments._char_config import CharLMConfig
from engine.models.char_transformer import CharTransformer

Batch = tuple[Tensor, Tensor]  # x, y: [batch, block] int64, y shifted by one character


class CharLM:
    """Corpus, model, optimizer, schedule, evaluation and sampling of one run."""

    def __init__(self, cfg: RunConfig, lm: CharLMConfig, device: torch.device) -> None:
        self.cfg, self.lm, self.device = cfg, lm, device
        seed = cfg.train.seed
        torch.manual_seed(seed)
        # One CPU generator for init, batches and surgery draws: a run is reproducible
        # from its seed, and its state is checkpointed.
        self.gen = torch.Generator().manual_seed(seed)
        self.sample_gen = torch.Generator(device=device).manual_seed(seed + 2)
        self.corpus: CharCorpus = load_char_corpus(lm.text, shift=lm.shift_iters > 0)
        self.corpus.check_block(lm.block_size)
        self.model = CharTransformer(self.corpus.vocab_size, lm.n_layer, lm.n_head, lm.n_embd, lm.block_size,
                                     lm.dropout, generator=self.gen).to(device)
        self.lr_scale = 1.0
        self.optimizer = self._optimizer()
        # Fixed validation windows per corpus, built once: [eval_iters] (x, y) pairs.
        self._val = {key: list(self.corpus.val_batches(key, lm.eval_iters, cfg.train.batch_size, lm.block_size,
                                                        seed + 1, device=device))
                     for key in self.corpus.corpora}
        self.train_seconds = 0.0  # wall time inside training steps since the last evaluation
        self.train_tokens = 0
        self._step_seconds = 0.0  # running mean of a training step's wall time (decision costs in steps)
        self._windows: dict[str, list[Batch]] = {}

    def _optimizer(self) -> torch.optim.Optimizer:
        tc, lm = self.cfg.train, self.lm
        named = list(self.model.named_parameters())  # the tied head appears once (as wte.weight)
        decay = [p for _, p in named if p.dim() >= 2]
        other = [p for _, p in named if p.dim() < 2]  # biases, LayerNorm: no decay (nanoGPT)
        groups = [{"params": decay, "weight_decay": lm.weight_decay}, {"params": other, "weight_decay": 0.0}]
        if tc.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
        return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, lm.beta2))

    # -- schedule ---------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based ``step``: linear warm-up, cosine to min_lr_ratio, per phase."""
        lm = self.lm
        it, total = (step, lm.max_iters) if step < lm.max_iters else (step - lm.max_iters, lm.shift_iters)
        base = self.cfg.train.lr * self.lr_scale
        if it < lm.warmup_iters:
            return base * (it + 1) / (lm.warmup_iters + 1)
        span = max(total - lm.warmup_iters, 1)
        progress = min((it - lm.warmup_iters) / span, 1.0)
        floor = base * lm.min_lr_ratio
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base - floor)

    # -- training ---------------------------------------------------------------------
    def batches(self, phase: str) -> Iterator[Batch]:
        """``eval_every`` random training windows of the phase's corpus, drawn lazily from :attr:`gen`."""
        key = "a" if phase == "train" else "b"
        for _ in range(self.lm.eval_every):
            x, y = self.corpus.batch(key, "train", self.cfg.train.batch_size, self.lm.block_size, self.gen)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, batch: Batch) -> Tensor:
        """Training forward: mean next-character cross-entropy (with its graph)."""
        self._t0 = time.perf_counter()
        self.model.train()
        return self.model.loss(*batch)

    def update(self, batch: Batch, step: int, loss: Tensor) -> float:
        """Backward, clip, optimizer step at the scheduled rate; returns the gradient norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.lm.grad_clip if self.lm.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.train_tokens += batch[0].numel()
        took = time.perf_counter() - self._t0
        self.train_seconds += took
        self._step_seconds = took if self._step_seconds == 0 else 0.98 * self._step_seconds + 0.02 * took
        return float(norm)

    def seconds_per_step(self) -> float:
        """Running mean wall time of one training step (0 before the first)."""
        return self._step_seconds

    def tokens_per_second(self) -> float:
        """Training throughput since the last call (then reset)."""
        rate = self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0
        self.train_tokens, self.train_seconds = 0, 0.0
        return rate

    # -- evaluation and sampling ------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, key: str) -> float:
        """Mean loss over corpus ``key``'s fixed validation batches (comparable across evaluations)."""
        self.model.eval()
        losses = [float(self.model.loss(x, y)) for x, y in self._val[key]]
        return sum(losses) / len(losses)

    def train_windows(self, key: str, n: int) -> list[Batch]:
        """``n`` fixed training-split batches of corpus ``key`` (the same on every call; measurements use them)."""
        if len(self._windows.get(key, ())) != n:
            tc = self.cfg.train
            self._windows[key] = list(self.corpus.val_batches(key, n, tc.batch_size, self.lm.block_size, tc.seed + 3,
                                                              split="train", device=self.device))
        return self._windows[key]

    def val_batch(self, key: str) -> Batch:
        """The first fixed validation batch of corpus ``key`` (probes use it)."""
        return self._val[key][0]

    @torch.no_grad()
    def sample(self, prompt: str = "\n") -> str:
        """``sample_chars`` sampled characters after ``prompt`` (reproducible from the run's seed)."""
        self.model.eval()
        ids = self.corpus.encode(prompt).to(self.device).view(1, -1)
        out = self.model.generate(ids, self.lm.sample_chars, self.lm.sample_temperature, self.lm.sample_top_k,
                                  self.sample_gen)
        return self.corpus.decode(out[0, ids.shape[1]:].tolist())

    # -- learning rate and state ------------------------------------------------------------
    def scale_learning_rate(self, factor: float) -> None:
        """Scale the schedule's base rate from now on (kept in :meth:`state_dict`)."""
        self.lr_scale *= factor
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def learning_rate(self) -> float:
        """The optimizer's current rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def parameter_count(self) -> int:
        """Model parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    def state_dict(self) -> dict[str, Any]:
        """Head and unit counts (shapes), model, optimizer, generators and the learning-rate scale."""
        return {"heads": self.model.head_counts(), "units": self.model.unit_counts(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.gen.get_state(),
                "sample_generator": self.sample_gen.get_state(), "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the model at the checkpoint's head and unit counts, then restore everything."""
        self.model.resize_heads({k: int(v) for k, v in state["heads"].items()})
        self.model.resize_to({k: int(v) for k, v in state["units"].items()})
        self.model.load_state_dict(state["model"])
        self.optimizer = self._optimizer()  # over the resized parameters, same order as surgery keeps
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.sample_gen.set_state(state["sample_generator"])
        self.lr_scale = float(state["lr_scale"])
