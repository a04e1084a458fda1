"""The inputs of the reference tests, stored: `python -m tests.reference_inputs` wrote them once.

torch.randn does not give the same bits on every machine: its CPU kernels
take another float path under another instruction set (ATEN_CPU_CAPABILITY
default vs avx2/avx512: up to 1.6e-6 apart on torch.randn(1000, 8)), and an
ill-conditioned problem amplifies that past any tolerance a golden can keep
(AlphaEdit's projector moved by 3e-5 on an AMD EPYC; issue 34). So the
seeded draws below were made once, on the AVX-512 path (the AVX2 path gives
the same bits), and saved to tests/data/reference_inputs.safetensors; the
tests load them and the golden numbers belong to these exact values.
`main` redraws them from the seeds (and refuses to overwrite the file with
other bits unless told to).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PATH = Path(__file__).parent / "data" / "reference_inputs.safetensors"


def draw() -> dict[str, torch.Tensor]:
    """The seeded draws, named by the test that reads them."""
    out: dict[str, torch.Tensor] = {}
    torch.manual_seed(0)
    out["rome_keys"] = torch.randn(100, 8)                       # ROME's covariance sample, one key per row
    torch.manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(8, 8))
    scales = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.3, 0.1, 0.05])
    out["alphaedit_K0"] = torch.randn(1000, 8) @ torch.diag(scales) @ Q.T     # preserved keys, one per row
    torch.manual_seed(5)
    out["alphaedit_K1"], out["alphaedit_R1"] = torch.randn(8, 2), torch.randn(6, 2)
    out["alphaedit_K2"], out["alphaedit_R2"] = torch.randn(8, 2), torch.randn(6, 2)
    torch.manual_seed(3)
    out["memit_K"], out["memit_targets"] = torch.randn(8, 3), torch.randn(6, 3)
    for T in (12, 6):
        torch.manual_seed(0)
        out[f"mink_logits_{T}"] = torch.randn(1, T, 50)
        out[f"mink_tokens_{T}"] = torch.randint(0, 50, (1, T))
    return out


def load() -> dict[str, torch.Tensor]:
    """The stored inputs."""
    return load_file(PATH)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Draw the reference tests' inputs and store them.")
    p.add_argument("--force", action="store_true", help="overwrite a stored file whose bits differ")
    args = p.parse_args(argv)
    new = draw()
    if PATH.exists() and not args.force:
        old = load()
        differ = [k for k in new if k not in old or not torch.equal(old[k], new[k])]
        if differ:
            raise SystemExit(f"this machine draws other bits for {differ} (torch kernel path "
                             f"{torch.backends.cpu.get_cpu_capability()}); the goldens belong to the stored ones. "
                             "--force only with goldens recomputed from the new inputs")
    PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in new.items()}, PATH)
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
