"""Component validation, hook names and range checks."""

from __future__ import annotations

import pytest

import excise
from excise import Component


def test_repr_and_str():
    c = Component(layer=5, kind="neuron", index=1732)
    assert repr(c) == "Component(L5.neuron[1732])"
    assert str(Component(3, "head", 2, position=7)) == "L3.head[2]@7"
    assert Component.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kw, msg", [
    (dict(layer=0, kind="mlpp"), "unknown component kind 'mlpp'"),
    (dict(layer=-1, kind="mlp"), "layer must be a non-negative int"),
    (dict(layer=0, kind="neuron"), "needs index="),
    (dict(layer=0, kind="mlp", index=3), "has no index"),
    (dict(layer=0, kind="resid", position=-2), "position must be"),
])
def test_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Component(**kw)


def test_hook_names_exist_in_a_bridge(tiny_gpt2_dir):
    model = excise.load(tiny_gpt2_dir, device="cpu")
    for kind, index in [("resid", None), ("mlp", None), ("attn", None), ("head", 1), ("neuron", 7)]:
        c = Component(1, kind, index).check(model)
        assert c.hook_name in model.hook_dict, c.hook_name


def test_out_of_range(tiny_gpt2_dir):
    model = excise.load(tiny_gpt2_dir, device="cpu")
    with pytest.raises(ValueError, match="the model has 2 layers \\(0..1\\)"):
        Component(2, "mlp").check(model)
    with pytest.raises(ValueError, match="layer 0 has 4 heads"):
        Component(0, "head", 4).check(model)
    with pytest.raises(ValueError, match="layer 0 has 128 neurons"):
        Component(0, "neuron", 128).check(model)
