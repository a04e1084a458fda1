"""excise: find where a transformer stores a fact, remove it, and prove it is gone.

    import excise
    model = excise.load("organism")
    world = excise.organism.world()
"""

from excise import edit, experiments, locate, methods, organism, stories, tofu, verify, zoo
from excise.components import Component
from excise.facts import Fact, FactSet, tokenize_prompt
from excise.models import ModelLoadError, load
from excise.scoring import recall_table
from excise.weights import fingerprint

__version__ = "0.1.0"
__all__ = ["Component", "Fact", "FactSet", "ModelLoadError", "edit", "experiments", "fingerprint", "load", "locate", "methods",
           "organism", "recall_table", "stories", "tofu", "tokenize_prompt", "verify", "zoo"]
