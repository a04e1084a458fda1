"""Small real checkpoints shipped with excise so every architecture path runs offline.

`excise.load(name)` finds a directory here by name before it looks anywhere else.
"""

from pathlib import Path

ZOO_DIR = Path(__file__).parent
MODELS = tuple(sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").exists()))


def _register() -> None:
    from excise.models import register_model

    for name in MODELS:
        register_model(name, lambda name=name: ZOO_DIR / name, f"a small real pretrained checkpoint shipped in excise/zoo/{name}")


_register()
