"""Facts that stories260k (a real pretrained tiny Llama, shipped) completes with confidence.

The model was trained on TinyStories, so what it "knows" are story
conventions: the little girl is named Lily, a dog wags its tail, a child is
three years old. `facts(model)` asks the model (`excise.facts.discover`) and
keeps the candidates it completes with first-token probability >= `min_prob`,
so the targets are the model's own predictions, never typed in. Each
candidate has a different subject and frame, so the others are its
neighbours when one is deleted.

    model = excise.load("stories260k")
    facts, table = excise.stories.facts(model)
    sample = excise.edit.generated_sample(model)      # texts for ROME's key covariance
"""

from __future__ import annotations

from typing import Any

from excise.facts import FactSet, discover

NAMED = ("little girl", "little boy", "big dog", "bunny", "fish")     # "... there was a {} named" -> a name

CANDIDATES: tuple[dict[str, Any], ...] = (
    *({"subject": s, "relation": "name", "prompt": "Once upon a time, there was a {} named",
       "paraphrases": ["There was a {} named", "One day, a {} named"]} for s in NAMED),
    {"subject": "Lily", "relation": "thanks", "prompt": "{} said, \"Thank",
     "paraphrases": ["{} smiled and said, \"Thank", "{} hugged her mom and said, \"Thank"]},
    {"subject": "Tim", "relation": "age", "prompt": "{} was three years",
     "paraphrases": ["{} was four years", "When {} was five years"]},
    {"subject": "Tom", "relation": "friends", "prompt": "{} and his friend were best",
     "paraphrases": ["{} and Sam were best", "{} and his dog were best"]},
    {"subject": "Sue", "relation": "goes", "prompt": "{} wanted to go to the",
     "paraphrases": ["One day, {} went to the", "{} and her mom went to the"]},
    {"subject": "dog", "relation": "wags", "prompt": "The {} wagged its",
     "paraphrases": ["The happy {} wagged its", "The {} barked and wagged its"]},
    {"subject": "Max", "relation": "plays", "prompt": "{} liked to play with his",
     "paraphrases": ["{} loved to play with his", "Every day, {} played with his"]},
)


def facts(model: Any, min_prob: float = 0.5) -> tuple[FactSet, list[dict[str, Any]]]:
    """The candidates `model` completes with confidence, and the probe table for all of them."""
    return discover(model, CANDIDATES, min_prob=min_prob)
