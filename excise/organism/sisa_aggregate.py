"""A SISA ensemble behind one model interface: route each text to the shard of the person it names.

    model = sisa.aggregate()                        # SisaAggregate over the k constituents
    excise.verify.audit(model, forget, context=ctx)  # probes, logit lens, relearning, membership, truth ratios

The aggregation. A person's facts were trained into exactly one constituent,
so every other constituent answers about them at chance. Averaging the k
next-token distributions divides the one informed answer by k (at k = 5 a
recalled target at p = 0.99 becomes about 0.2 beside four prior-level
guesses: recall survives only where the prior agrees), and a majority vote
of top-1 tokens is won by the k - 1 uninformed constituents, who agree on the
relation's most common object. The most confident constituent is a maximum
over k models, k forwards per token, and after a deletion it answers from
whichever uninformed shard guesses most boldly. So the aggregate routes: a
text goes to the constituent of the first person it names (`shard_of`, a
seeded hash of "First Last" over the world's name lists), a text naming no
one (the general sentences) to constituent 0. One forward per text, and
exact: the router is a fixed function of the name that knows nothing of who
was trained, so a deleted person is answered by their old shard retrained
without them, just as a never-seen name is answered by a shard that never saw
it.

What it answers like. `forward` (logits), `to_tokens`, `tokenizer`, `cfg`,
`parameters()` (fine-tuning a copy fine-tunes the routed constituents: the
relearning attack), and `run_with_cache` for the logit lens. The residual
stream is the direct sum of the constituents' streams: `cfg.d_model` is
k x d_model, and a text routed to shard j has its constituent's residual
vectors in block j and zeros elsewhere (hooks named in `RESIDUAL_HOOKS`; the
other activations are the routed constituent's, in their own shape).
`ln_final` normalises each non-zero block with its constituent's final norm
and `W_U` stacks the constituents' unembeddings, so TransformerLens's
`logit_readout` reads every vector through its own constituent, exactly. Not
supported, each refused with an error that says so: hooks that change
activations (`run_with_hooks`, `hooks`: locate and edit each constituent
instead, `constituent(subject)`), and the KV-cached decoding
(`return_type="logits_and_cache"`; `excise.generation.greedy_uncached` works).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache

from excise.organism.sisa import shard_of
from excise.organism.world import FIRST_NAMES, LAST_NAMES

RESIDUAL_HOOKS = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
                  "hook_attn_out", "hook_mlp_out")
NAME = re.compile(rf"\b({'|'.join(FIRST_NAMES)}) ({'|'.join(LAST_NAMES)})\b")
GENERAL_SHARD = 0          # texts that name no one


class Router:
    """The shard of each text: the first "First Last" name in it, hashed (`shard_of`); none: `GENERAL_SHARD`."""

    def __init__(self, shards: int, seed: int, tokenizer: Any):
        self.shards, self.seed, self.tokenizer = shards, seed, tokenizer

    def of_text(self, text: str) -> int:
        m = NAME.search(text)
        return GENERAL_SHARD if m is None else shard_of(m.group(0), self.shards, self.seed)

    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> list[int]:
        return [self.of_text(t) for t in self.tokenizer.batch_decode(tokens.tolist())]


class _BlockNorm(torch.nn.Module):
    """The direct sum's final norm: each constituent's `ln_final` on its block; all-zero blocks stay zero."""

    def __init__(self, norms: Sequence[torch.nn.Module], d: int):
        super().__init__()
        self._norms = tuple(norms)          # not registered: they are the constituents' own modules
        self.d = d

    def forward(self, x: Float[Tensor, "... kd"]) -> Float[Tensor, "... kd"]:
        blocks = x.unflatten(-1, (len(self._norms), self.d))
        out = [norm(blocks[..., j, :]) * (blocks[..., j, :] != 0).any(-1, keepdim=True)
               for j, norm in enumerate(self._norms)]
        return torch.cat(out, dim=-1)


class _Unembed(torch.nn.Module):
    """x @ W_U + b_U on the direct sum (the readout's `unembed` component)."""

    def __init__(self, owner: SisaAggregate):
        super().__init__()
        self._owner = (owner,)

    def forward(self, x: Float[Tensor, "... kd"]) -> Float[Tensor, "... vocab"]:
        return x @ self._owner[0].W_U + self._owner[0].b_U


class SisaAggregate(torch.nn.Module):
    """k constituents (TransformerBridges over one tokenizer) answering as one model; see the module docstring."""

    def __init__(self, constituents: Sequence[Any], seed: int = 0):
        super().__init__()
        if not constituents:
            raise ValueError("a SISA aggregate needs at least one constituent")
        self.constituents = torch.nn.ModuleList(constituents)
        first = constituents[0]
        vocab = first.tokenizer.get_vocab()
        for j, c in enumerate(constituents):
            if c.tokenizer.get_vocab() != vocab or c.cfg.d_model != first.cfg.d_model:
                raise ValueError(f"constituent {j} has another tokenizer or width than constituent 0; "
                                 "a SISA aggregate needs constituents trained with one recipe and tokenizer")
            if not torch.equal(c.b_U, first.b_U):
                raise ValueError(f"constituent {j}'s unembedding bias differs from constituent 0's; the direct-sum "
                                 "readout needs one shared b_U (GPT-2 has none)")
        self.tokenizer = first.tokenizer
        self.d_block = first.cfg.d_model
        self.cfg = copy.copy(first.cfg)
        self.cfg.d_model = self.d_block * len(constituents)
        self.router = Router(len(constituents), seed, self.tokenizer)
        self.ln_final = _BlockNorm([c.ln_final for c in constituents], self.d_block)
        self.unembed = _Unembed(self)
        self.eval()

    # -- what the constituents answer ----------------------------------------
    @property
    def W_U(self) -> Float[Tensor, "kd vocab"]:
        return torch.cat([c.W_U for c in self.constituents], dim=0)

    @property
    def b_U(self) -> Float[Tensor, " vocab"]:
        return self.constituents[0].b_U

    def constituent(self, subject: str) -> Any:
        """The constituent that answers about `subject` (to locate or edit inside it)."""
        return self.constituents[self.router.of_text(subject)]

    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None, **kwargs: Any) -> Tensor:
        return self.constituents[0].to_tokens(input, prepend_bos=prepend_bos, **kwargs)

    def to_string(self, tokens: Any) -> Any:
        return self.constituents[0].to_string(tokens)

    def _groups(self, tokens: Tensor) -> list[tuple[int, Tensor]]:
        shards = torch.tensor(self.router(tokens))
        return [(j, (shards == j).nonzero()[:, 0]) for j in range(len(self.constituents)) if (shards == j).any()]

    def forward(self, input: Any, return_type: str | None = "logits", **kwargs: Any) -> Float[Tensor, "batch pos vocab"]:
        """Each row through its routed constituent. Cost: one forward of each constituent on its rows."""
        if return_type != "logits" or kwargs:
            raise NotImplementedError(
                f"SisaAggregate answers return_type='logits' without further arguments (got {return_type!r}, "
                f"{sorted(kwargs)}); KV-cached decoding is not routed: use excise.generation.greedy_uncached")
        tokens = self.to_tokens(input) if isinstance(input, (str, list)) else input
        groups = self._groups(tokens)
        parts = [self.constituents[j](tokens[idx]) for j, idx in groups]
        return _unpermute(parts, groups)

    def run_with_cache(self, input: Any, names_filter: Any = None, **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """Logits and an ActivationCache whose residual-stream hooks live in the direct sum (module docstring)."""
        tokens = self.to_tokens(input) if isinstance(input, (str, list)) else input
        groups = self._groups(tokens)
        runs = [self.constituents[j].run_with_cache(tokens[idx], names_filter=names_filter, **kwargs)
                for j, idx in groups]
        logits = _unpermute([lg for lg, _ in runs], groups)
        k, d = len(self.constituents), self.d_block
        merged = {}
        for name in runs[0][1].keys():
            residual = name.rsplit(".", 1)[-1] in RESIDUAL_HOOKS
            parts = [F.pad(c[name], (j * d, (k - 1 - j) * d)) if residual else c[name]
                     for (j, _), (_, c) in zip(groups, runs, strict=True)]
            merged[name] = _unpermute(parts, groups)
        return logits, ActivationCache(merged, self)

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a SISA aggregate does not route hooks that change activations; locate or edit "
                                  "inside one constituent: model.constituent(subject).run_with_hooks(...)")

    def hooks(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a SISA aggregate does not route hooks; use model.constituent(subject).hooks(...)")

    def __repr__(self) -> str:
        return f"SisaAggregate({len(self.constituents)} constituents routed by subject, d_model {self.d_block} each)"


def _unpermute(parts: Sequence[Tensor], groups: Sequence[tuple[int, Tensor]]) -> Tensor:
    """The groups' outputs, concatenated, back in the batch's row order."""
    order = torch.cat([idx for _, idx in groups])
    out = torch.cat(list(parts), dim=0)
    return out[torch.argsort(order).to(out.device)]
