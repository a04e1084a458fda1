"""A seeded causal toy LM with TransformerLens hook points (`blocks.{l}.hook_resid_post`), for golden tests of
metrics whose reference code was run on the same toy: its weights come from torch's seeded CPU generator, the
same on every machine."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

VOCAB, WIDTH = 23, 8


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(WIDTH, WIDTH)
        self.hook_resid_post = HookPoint()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]       # each position sees its prefix
        return self.hook_resid_post(h + torch.tanh(self.mix(h.cumsum(1) / n)))


class TinyHooked(HookedRootModule):
    def __init__(self, seed: int, n_layers: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.blocks = torch.nn.ModuleList([Block() for _ in range(n_layers)])
        self.out = torch.nn.Linear(WIDTH, VOCAB)
        self.cfg = SimpleNamespace(n_layers=n_layers, d_model=WIDTH)
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.setup()

    def forward(self, ids: torch.Tensor, **_) -> torch.Tensor:
        h = self.emb(ids)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def models() -> tuple[TinyHooked, TinyHooked, TinyHooked]:
    """(full, retain, unlearned): the unlearned one is the full one with its last block redrawn (seed 2)."""
    full, retain, unlearned = TinyHooked(0), TinyHooked(1), TinyHooked(0)
    torch.manual_seed(2)
    unlearned.blocks[-1].mix.reset_parameters()
    return full, retain, unlearned
