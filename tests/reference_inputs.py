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

# The reference-parity report's C (ROME's SecondMoment, mom2 / count, of "rome_keys", summed in float32) at 10
# significant digits, enough to pin its float32 bits; tests/test_patil_reference.py starts ROME's update from it.
REPORT_ROME_C = [
    [0.684815526, 0.06938558817, 0.02867120318, -0.06307569146, -0.1786145717, -0.04399010539, -0.1123143211, 0.1082816347],
    [0.06938558817, 1.253857374, 0.04410423338, 0.03435443342, -0.1327620447, -0.05172852427, 0.004486203194, 0.08611924946],
    [0.02867120318, 0.04410423338, 1.013034225, 0.2162262946, -0.0610566996, 0.1013070941, -0.1307527423, 0.2544853985],
    [-0.06307569146, 0.03435443342, 0.2162262946, 1.140101433, -0.1095388159, 0.08731631935, 0.03452515975, -0.01622534543],
    [-0.1786145717, -0.1327620447, -0.0610566996, -0.1095388159, 0.8493425846, -0.01583044976, -0.01713194326, -0.02224926278],
    [-0.04399010539, -0.05172852427, 0.1013070941, 0.08731631935, -0.01583044976, 1.275991201, -0.2409364879, 0.1547271013],
    [-0.1123143211, 0.004486203194, -0.1307527423, 0.03452515975, -0.01713194326, -0.2409364879, 1.092939973, -0.2846167386],
    [0.1082816347, 0.08611924946, 0.2544853985, -0.01622534543, -0.02224926278, 0.1547271013, -0.2846167386, 1.037912488],
]


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
