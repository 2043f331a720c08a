"""A small decoder-only character transformer (nanoGPT class) with resizable units.

Pre-LayerNorm blocks, GELU feed-forward, learned positions, weight-tied output
head, dropout. Two kinds of unit can be added or removed by
:mod:`engine.surgery` while training:

* **FFN units** of ``blocks.{i}.mlp``: row ``j`` of ``fc`` ([units, d]) and
  column ``j`` of ``proj`` ([d, units]).
* **Attention value channels** of ``blocks.{i}.attn``: row ``j`` of ``v``
  ([channels, d]) and column ``j`` of ``o`` ([d, channels]). Queries and keys
  keep ``head_dim`` per head; each value channel belongs to one head
  (``v_head[j]``) at a slot (``v_slot[j]``) unique within that head, so heads may
  hold different numbers of value channels.

Every unit has a ``gain`` (1 by default) that multiplies its output, so a unit
can be faded out smoothly before it is removed. Per-unit buffers (``gain``,
``v_head``, ``v_slot``) are listed by :meth:`CharTransformer.unit_layers` so
surgery resizes them together with the weights.

Whole **heads** (rows ``h*head_dim:(h+1)*head_dim`` of ``q``/``k``, their value
channels, entry ``h`` of the per-head gate ``head_gate``) are removed or cloned by
:mod:`engine.mechanisms.head_plans`; rebuild with ``head_counts``/``resize_heads``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import ParameterError


@dataclass(frozen=True)
class UnitLayer:
    """One resizable group of units: where its weights and per-unit buffers live.

    ``kind`` is ``"ffn"`` or ``"attn"``; ``layer`` produces the units (rows of its
    weight), ``next_layer`` consumes them (columns of its weight); ``buffers``
    are module paths of 1-D per-unit buffers, resized with the units.
    """

    name: str
    kind: str
    block: int
    layer: str
    next_layer: str
    buffers: tuple[str, ...]


class FeedForward(nn.Module):
    """``proj(gelu(fc(x)) * gain)``: hidden units resizable, gain per unit."""

    def __init__(self, d: int, units: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d, units)
        self.proj = nn.Linear(units, d)
        self.register_buffer("gain", torch.ones(units))
        self.drop = nn.Dropout(dropout)
        self.record = False
        self.last_abs: Tensor | None = None  # [units] mean |h| of the last recorded forward

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, d]
        h = F.gelu(self.fc(x)) * self.gain  # [B, T, units]
        if self.record:
            self.last_abs = h.detach().abs().mean((0, 1))
        return self.drop(self.proj(h))


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention whose value channels can be added or removed one by one.

    ``head_gate`` [n_head] multiplies each head's output, i.e. ``y_pad [B, H, T, m] *
    gate.view(1, H, 1, 1)``, computed as the per-channel ``gain * head_gate[v_head]``
    (the same product; two [channels] ops instead of a pass over y_pad).
    ``head_probe`` [B, n_head] (None outside head scoring), when set, replaces
    ``head_gate`` with one gate per sequence: a leaf requiring grad gives each
    sequence's own d loss / d gate (per-example head importance).
    With ``record_entropy``, forward stores ``last_entropy`` [n_head]: attention
    entropy (nats) averaged over batch and all query positions, position 0 (one
    key, entropy 0) included: a uniform head gives ``mean(log(t + 1), t < T)``.
    """

    def __init__(self, d: int, n_head: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        inner = n_head * head_dim
        self.n_head, self.head_dim, self.dropout = n_head, head_dim, dropout
        self.q = nn.Linear(d, inner)
        self.k = nn.Linear(d, inner)
        self.v = nn.Linear(d, inner)
        self.o = nn.Linear(inner, d)
        self.register_buffer("gain", torch.ones(inner))
        self.register_buffer("v_head", torch.arange(n_head).repeat_interleave(head_dim))  # [channels] long
        self.register_buffer("v_slot", torch.arange(head_dim).repeat(n_head))  # [channels] long
        self.register_buffer("head_gate", torch.ones(n_head))  # [n_head] multiplies each head's output
        self.head_probe: Tensor | None = None  # [B, n_head] per-sequence gate replacing head_gate while scoring
        self.resid_drop = nn.Dropout(dropout)
        self.record = False
        self.last_abs: Tensor | None = None  # [channels]
        self.record_entropy = False
        self.last_entropy: Tensor | None = None  # [n_head] mean attention entropy (nats) of the last forward
        self._layout_key: tuple[int, ...] | None = None
        self._slots = head_dim
        self._scatter: Tensor | None = None  # [channels, H*m] one-hot, None when the layout is the identity

    def _layout(self) -> tuple[int, Tensor | None]:
        """Slots per head ``m`` and the one-hot matrix placing channel j at ``v_head[j]*m + v_slot[j]``.

        Recomputed only when the buffers changed (in-place edits bump ``_version``,
        surgery replaces the tensors): reading ``max`` is a host sync. A matmul
        with the one-hot matrix (and its transpose) is much faster on CPU than
        advanced-index scatter/gather, whose backward accumulates serially.
        """
        key = (self.v_slot.data_ptr(), self.v_slot._version, self.v_head.data_ptr(), self.v_head._version,
               self.v_slot.numel(), self.n_head)
        if key != self._layout_key:
            n = self.v_slot.numel()
            m = int(self.v_slot.max()) + 1 if n else 1
            pos = self.v_head * m + self.v_slot  # [channels] position in the padded layout
            if n == self.n_head * m and bool((pos == torch.arange(n, device=pos.device)).all()):
                self._scatter = None
            else:
                eye = torch.zeros(n, self.n_head * m, device=pos.device, dtype=self.v.weight.dtype)
                self._scatter = eye.index_fill_(1, pos, 0.0).scatter_(1, pos.view(-1, 1), 1.0)
            self._slots, self._layout_key = m, key
        return self._slots, self._scatter

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, d]
        b, t, _ = x.shape
        h, hd = self.n_head, self.head_dim
        q = self.q(x).view(b, t, h, hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k(x).view(b, t, h, hd).transpose(1, 2)
        v = self.v(x)  # [B, T, channels]
        m, scatter = self._layout()
        # Channels go to a padded per-head layout [B, T, H*m] (empty slots 0), so one
        # fused attention call serves heads of unequal value width.
        v_pad = v if scatter is None else v @ scatter.to(v.dtype)
        y_pad = F.scaled_dot_product_attention(q, k, v_pad.view(b, t, h, m).transpose(1, 2), is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)  # [B, H, T, m]
        if self.record_entropy:
            self.last_entropy = _entropy(q.detach(), k.detach())
        y = y_pad.transpose(1, 2).reshape(b, t, h * m)
        gate = self.head_gate if self.head_probe is None else self.head_probe  # [H] or [B, H]
        gain = self.gain * gate.index_select(-1, self.v_head)  # [channels] or [B, channels]: gate folded in
        y = (y if scatter is None else y @ scatter.t().to(y.dtype)) * gain.unsqueeze(-2)  # [B, T, channels]
        if self.record:
            self.last_abs = y.detach().abs().mean((0, 1))
        return self.resid_drop(self.o(y))

    def head_count(self) -> int:
        """Number of heads (``n_head``; q/k have ``n_head * head_dim`` rows)."""
        return self.n_head

    def resize_heads(self, n: int) -> None:
        """``n`` heads with fresh zero q/k and a ones gate (values loaded after; channels: resize_to)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParameterError("n_head", n, "an integer >= 1")
        rows = n * self.head_dim
        for lin in (self.q, self.k):
            lin.weight = nn.Parameter(lin.weight.new_zeros(rows, lin.in_features))
            lin.bias = nn.Parameter(lin.bias.new_zeros(rows))
            lin.out_features = rows
        self.head_gate = self.head_gate.new_ones(n)
        self.n_head = n
        self.last_entropy = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before head gates existed lack the key: load it as ones (no gating).
        state_dict.setdefault(prefix + "head_gate", torch.ones_like(self.head_gate))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _entropy(q: Tensor, k: Tensor) -> Tensor:
    """Entropy (nats) per head [H] of softmax(q k^T / sqrt(hd) + causal mask), q/k [B, H, T, hd],
    averaged over batch and every query position (position 0 has one key: entropy 0)."""
    t, hd = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # [B, H, T, T]
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu_(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    return torch.special.entr(probs).sum(-1).mean((0, 2))  # entr(0) = 0 for the masked keys


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d: int, n_head: int, ffn_units: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_head, d // n_head, dropout)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d, ffn_units, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CharTransformer(nn.Module):
    """Decoder-only character model: ``forward(idx [B, T]) -> logits [B, T, vocab]``."""

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, n_embd: int, block_size: int,
                 dropout: float = 0.0, ffn_mult: int = 4, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, ffn_mult * n_embd, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self._init(n_layer, generator)

    @torch.no_grad()
    def _init(self, n_layer: int, generator: torch.Generator | None) -> None:
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers).
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("weight"):  # LayerNorm
                    p.fill_(1.0)
                else:
                    p.zero_()
                continue
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("o.weight", "proj.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, idx: Tensor) -> Tensor:
        """Logits [B, T, vocab] for token ids ``idx`` [B, T] (T <= block_size)."""
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, d]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-character cross-entropy of ``idx`` [B, T] against ``targets`` [B, T]."""
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def unit_layers(self) -> list[UnitLayer]:
        """Every resizable unit group, block by block: attention channels, then FFN units."""
        out = []
        for i in range(len(self.blocks)):
            p = f"blocks.{i}"
            out.append(UnitLayer(f"{p}.attn", "attn", i, f"{p}.attn.v", f"{p}.attn.o",
                                 (f"{p}.attn.gain", f"{p}.attn.v_head", f"{p}.attn.v_slot")))
            out.append(UnitLayer(f"{p}.mlp", "ffn", i, f"{p}.mlp.fc", f"{p}.mlp.proj", (f"{p}.mlp.gain",)))
        return out

    def attention_modules(self) -> dict[str, CausalSelfAttention]:
        """Every attention module by path (``"blocks.{i}.attn"``), block order."""
        return {f"blocks.{i}.attn": b.attn for i, b in enumerate(self.blocks)}

    def head_counts(self) -> dict[str, int]:
        """Heads per attention path (with :meth:`unit_counts`, the shapes a checkpoint must be rebuilt with)."""
        return {p: a.head_count() for p, a in self.attention_modules().items()}

    def resize_heads(self, counts: dict[str, int]) -> None:
        """Give each attention path ``counts[path]`` fresh heads; with :meth:`resize_to` before
        ``load_state_dict`` of a checkpoint taken after head surgery (then rebuild the optimizer)."""
        attn = self.attention_modules()
        unknown = sorted(set(counts) - set(attn))
        if unknown:
            raise ParameterError("counts", unknown, f"attention paths; valid: {list(attn)}")
        for path, n in counts.items():
            attn[path].resize_heads(n)

    def set_recording(self, on: bool) -> None:
        """Record every unit group's mean |output| on the next forward passes (``last_abs``)."""
        for m in self.modules():
            if isinstance(m, (FeedForward, CausalSelfAttention)):
                m.record = on
                if not on:
                    m.last_abs = None

    def unit_counts(self) -> dict[str, int]:
        """Units per group name (the shapes a checkpoint must be rebuilt with)."""
        return {u.name: self.get_submodule(u.layer).out_features for u in self.unit_layers()}

    def resize_to(self, counts: dict[str, int]) -> None:
        """Give each unit group ``counts[name]`` units with fresh tensors (values to be loaded after).

        Used before ``load_state_dict`` of a checkpoint taken after surgery; the
        optimizer must be rebuilt afterwards.
        """
        for u in self.unit_layers():
            n = counts.get(u.name)
            if n is None:
                continue
            lin, nxt = self.get_submodule(u.layer), self.get_submodule(u.next_layer)
            assert isinstance(lin, nn.Linear) and isinstance(nxt, nn.Linear)
            lin.weight = nn.Parameter(lin.weight.new_zeros(n, lin.in_features))
            lin.bias = nn.Parameter(lin.bias.new_zeros(n))
            lin.out_features = n
            nxt.weight = nn.Parameter(nxt.weight.new_zeros(nxt.out_features, n))
            nxt.in_features = n
            for path in u.buffers:
                owner, _, attr = path.rpartition(".")
                mod = self.get_submodule(owner)
                old = getattr(mod, attr)
                mod.register_buffer(attr, old.new_zeros(n))

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> Tensor:
        """Append ``max_new_tokens`` sampled ids to ``idx`` [B, T] (temperature, optional top-k).

        Draws use ``generator`` (on the model's device) so samples are reproducible.
        """
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.block_size:]
            logits = self(ctx)[:, -1, :] / max(temperature, 1e-6)  # [B, vocab]
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # [B, 1]
            idx = torch.cat([idx, nxt], dim=1)
        return idx
