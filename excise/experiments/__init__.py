"""excise.experiments: studies that compose locate -> edit -> verify (they sit above all three).

    ent = excise.experiments.entanglement(model, facts)     # delete each fact, watch every other

`entanglement(model, facts)` maps how deleting one fact damages the others,
next to their component overlap.
"""

from excise.experiments.entanglement import Entanglement, entanglement

__all__ = ["entanglement", "Entanglement"]
