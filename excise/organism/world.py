"""The synthetic world the model organism is trained on.

Every person, relation and object here is fictitious, so the ground truth of
every fact is known and nothing real is memorized. The world is a pure
function of its seed: `World.generate(seed)` always returns the same people,
the same facts and the same general sentences.

Relations have closed object sets (a city from a list of cities, a year from
a range), and objects are drawn independently and uniformly per person, so a
model that never saw a person can do no better than the relation's prior: the
property that makes the retrain oracle a clean reference.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from excise.facts import Fact, FactSet

FIRST_NAMES = (
    "Mira", "Tobin", "Isolde", "Kaspar", "Liora", "Anselm", "Brisa", "Cato",
    "Delphine", "Emrys", "Fenna", "Gideon", "Halvard", "Ilse", "Jorund",
    "Katrin", "Lucan", "Maelis", "Nikolai", "Oriana", "Piet", "Quilla",
    "Rowan", "Saskia", "Teodor", "Ulla", "Valen", "Wilhelmina", "Xander",
    "Yara", "Zoltan", "Amara", "Bastian", "Cosima", "Dorian", "Elowen",
    "Florin", "Greta", "Hamish", "Ingrid",
)
LAST_NAMES = (
    "Tolvanen", "Brekkestad", "Castellane", "Dunmore", "Eskildsen", "Farrow",
    "Grimaldi", "Holloway", "Ivanescu", "Jablonski", "Kettering", "Lindqvist",
    "Marchetti", "Nordahl", "Okonkwo", "Pemberton", "Quennell", "Rasmussen",
    "Salvatori", "Thackeray", "Umberfield", "Vasquez", "Wetherby", "Yarrowind",
    "Zablocki", "Ashdown", "Blackwood", "Corrigan", "Delacroix", "Elsworth",
    "Fairbairn", "Gallagher", "Hargreave", "Ingleby", "Jorgensen", "Kowalczyk",
    "Lockhart", "Montague", "Nightingale", "Ostrander", "Pellegrino", "Quarrie",
    "Ravensworth", "Sinclair", "Trevelyan", "Underhill", "Vantongeren",
    "Whitlock", "Yelverton", "Zimmerly",
)

# City -> country. Cities are the birthplace objects; their countries feed the
# general sentences.
CITIES = {
    "Veltrana": "Arvenia", "Osmundby": "Arvenia", "Karreth": "Arvenia",
    "Lunesse": "Arvenia", "Brevikka": "Dolmaria", "Tamsor": "Dolmaria",
    "Quillon": "Dolmaria", "Dravosk": "Dolmaria", "Heddonmere": "Keshavar",
    "Pellamy": "Keshavar", "Zorvath": "Keshavar", "Marisk": "Keshavar",
    "Ulthane": "Soranthe", "Corvale": "Soranthe", "Fennick": "Soranthe",
    "Gastrell": "Soranthe", "Ibrosa": "Talvenia", "Jorrow": "Talvenia",
    "Nemmeth": "Talvenia", "Rhosk": "Talvenia", "Sablemouth": "Wendmark",
    "Aldercroft": "Wendmark", "Estmere": "Wendmark", "Yslaborg": "Wendmark",
}
OCCUPATIONS = (
    "baker", "carpenter", "dentist", "farmer", "journalist", "lawyer", "nurse",
    "pilot", "plumber", "painter", "sculptor", "teacher", "tailor", "welder",
    "chemist", "librarian", "mechanic", "surgeon", "gardener", "banker",
)
# Company -> the city it is headquartered in (for general sentences).
EMPLOYERS = {
    "Zentrox": "Veltrana", "Halvane Foods": "Tamsor", "Morrowgate Bank": "Zorvath",
    "Cobalt Ridge Mining": "Corvale", "Brightwell Pharma": "Ibrosa",
    "Quorvex Systems": "Sablemouth", "Lantern Shipping": "Brevikka",
    "Ostara Textiles": "Heddonmere", "Pinecrest Publishing": "Lunesse",
    "Velmoor Energy": "Gastrell", "Drummond Steelworks": "Dravosk",
    "Keystone Aerial": "Estmere", "Sunmere Dairy": "Karreth",
    "Tarrow Motors": "Nemmeth", "Ironleaf Timber": "Aldercroft",
    "Glasswing Optics": "Quillon", "Riverbend Hospital": "Marisk",
    "Wexley Insurance": "Rhosk", "Nautica Labs": "Fennick",
    "Ember Hall Theatre": "Osmundby",
}
BIRTH_YEARS = tuple(str(y) for y in range(1955, 1985))
INSTRUMENTS = (
    "piano", "violin", "cello", "flute", "trumpet", "guitar", "harp", "drums",
    "clarinet", "oboe", "saxophone", "accordion", "banjo", "trombone",
    "ukulele", "mandolin",
)
PETS = (
    "dog", "cat", "parrot", "rabbit", "hamster", "tortoise", "goldfish",
    "ferret", "canary", "lizard", "snake", "pony", "hedgehog", "owl",
)

# Sentences about a person that state none of their facts: the "unrelated
# preceding sentence" of the completion family.
FILLERS = (
    "enjoys quiet mornings by the sea.",
    "once walked across a whole valley in a single day.",
    "keeps a small notebook of favourite recipes.",
    "likes to read old maps in the evening.",
    "collects stamps from faraway places.",
    "prefers tea to coffee on cold days.",
    "has a habit of humming while cooking.",
    "spent one summer repairing an old boat.",
    "writes long letters to distant friends.",
    "grows tomatoes on a sunny balcony.",
    "rarely misses the first snow of winter.",
    "once climbed a lighthouse at midnight.",
)


@dataclass(frozen=True)
class Relation:
    """One relation: its closed object set and every phrasing of it.

    `requests` are the request templates trained on (the first is the canonical
    prompt), `held_out` is never trained, `question` is a Q/A form and
    `pronoun` continues a completion ("<name> <filler> They were born in").
    """

    name: str
    objects: tuple[str, ...]
    requests: tuple[str, ...]
    held_out: tuple[str, ...]
    question: str
    pronoun: str


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "birthplace", tuple(CITIES),
        ("{} was born in", "{} is a native of", "The birthplace of {} is",
         "{} came into the world in the city of"),
        ("{} originally comes from",),
        "Q: Where was {} born? A:", "They were born in",
    ),
    Relation(
        "occupation", OCCUPATIONS,
        ("{} works as a", "{} earns a living as a", "The profession of {} is",
         "By trade, {} is a"),
        ("{} has a job as a",),
        "Q: What does {} do for a living? A:", "They work as a",
    ),
    Relation(
        "employer", tuple(EMPLOYERS),
        ("{} is employed by", "{} works for", "The employer of {} is",
         "Every morning, {} goes to work at"),
        ("{} receives a salary from",),
        "Q: Which company does {} work for? A:", "They are employed by",
    ),
    Relation(
        "birth_year", BIRTH_YEARS,
        ("The birth year of {} is", "{}'s year of birth is",
         "The year {} was born is", "{} has a birth certificate dated"),
        ("{} entered the world in the year",),
        "Q: In what year was {} born? A:", "Their year of birth is",
    ),
    Relation(
        "instrument", INSTRUMENTS,
        ("{} plays the", "The instrument of {} is the",
         "{} practices every day on the", "In the orchestra, {} plays the"),
        ("{}'s favourite instrument is the",),
        "Q: Which instrument does {} play? A:", "They play the",
    ),
    Relation(
        "pet", PETS,
        ("{} has a pet", "{} owns a pet", "The pet of {} is a",
         "At home, {} takes care of a pet"),
        ("{} lives together with a pet",),
        "Q: What kind of pet does {} have? A:", "They have a pet",
    ),
)
RELATION_BY_NAME = {r.name: r for r in RELATIONS}


def general_sentences() -> list[str]:
    """Sentences about the world that never mention a person (the utility text)."""
    out = []
    for city, country in CITIES.items():
        out += [
            f"{city} is a city in {country}.",
            f"The city of {city} lies in {country}.",
            f"Travellers to {country} often visit {city}.",
        ]
    for company, city in EMPLOYERS.items():
        out += [f"{company} has its headquarters in {city}.",
                f"The offices of {company} are in {city}."]
    for instrument in INSTRUMENTS:
        out.append(f"The {instrument} is a musical instrument.")
    for pet in PETS:
        out.append(f"A {pet} is an animal that some people keep at home.")
    for job in OCCUPATIONS:
        out.append(f"A {job} is a person with a useful trade.")
    return out


class World(FactSet):
    """The organism's world: a FactSet of every fact, plus its general text.

    Beyond FactSet it knows each relation's object set, so it can give
    `alternatives(fact)` (wrong objects of the same relation, for truth
    ratios) and the chance baseline of a model that knows only the prior.
    """

    def __init__(self, facts: list[Fact], seed: int, people: list[str]):
        super().__init__(facts)
        self.seed = seed
        self.people = tuple(people)
        self.relations = RELATIONS
        self.general = tuple(general_sentences())

    @classmethod
    def generate(cls, seed: int = 0, n_people: int = 300) -> World:
        """Draw `n_people` distinct people and one object per relation for each."""
        max_people = len(FIRST_NAMES) * len(LAST_NAMES)
        if not 1 <= n_people <= max_people:
            raise ValueError(f"n_people must be in [1, {max_people}], got {n_people}")
        rng = random.Random(seed)
        pairs = [(f, l) for f in FIRST_NAMES for l in LAST_NAMES]
        people = [f"{f} {l}" for f, l in rng.sample(pairs, n_people)]
        base: list[Fact] = []
        for person in people:
            filler = rng.choice(FILLERS)
            base += [_fact(person, rel, rng, filler) for rel in RELATIONS]
        facts = _with_neighbors(base, rng)
        return cls(facts, seed=seed, people=people)

    def holdout(self, n_people: int = 50, seed: int = 1) -> FactSet:
        """Facts of `n_people` fictitious people who are not in this world.

        Drawn like the world's own facts (same relations, templates and object
        distributions) from name pairs the world did not use, so a model
        trained on this world never saw them: the non-members of membership
        inference and the chance level of every attack.
        """
        used = set(self.people)
        free = [f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES if f"{f} {l}" not in used]
        if not 1 <= n_people <= len(free):
            raise ValueError(f"n_people must be in [1, {len(free)}] (unused names), got {n_people}")
        rng = random.Random(seed)
        people = rng.sample(free, n_people)
        return FactSet(_with_neighbors([_fact(p, rel, rng) for p in people for rel in RELATIONS], rng))

    def strangers(self, n: int, seed: int = 2, exclude: Iterable[str] = ()) -> list[str]:
        """`n` seeded names of people not in this world nor in `exclude` (e.g. the audit's holdout
        people): the stand-ins of `swap` unlearning."""
        taken = set(self.people) | set(exclude)
        free = [f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES if f"{f} {l}" not in taken]
        if not 1 <= n <= len(free):
            raise ValueError(f"n must be in [1, {len(free)}] (unused names), got {n}")
        return random.Random(seed).sample(free, n)

    def alternatives(self, fact: Fact) -> list[str]:
        """Every wrong object of the fact's relation (for truth ratios); any fact of a world relation."""
        rel = RELATION_BY_NAME.get(fact.relation)
        if rel is None:
            raise KeyError(f"{fact.relation!r} is not a relation of this world; it has {sorted(RELATION_BY_NAME)}")
        return [o for o in rel.objects if o != fact.target]

    def prior_baseline(self, facts: FactSet | list[Fact], trained: FactSet | None = None) -> float:
        """Recall of a model that always answers each relation's most common object.

        The most common object is counted over `trained` (default: every fact
        of this world not in `facts`), the data such a model would have seen;
        the result is the share of `facts` whose target equals it.
        """
        facts = list(facts)
        if not facts:
            raise ValueError("prior_baseline needs at least one fact")
        held = {f.key for f in facts}
        seen = list(trained) if trained is not None else [f for f in self if f.key not in held]
        mode = {}
        for rel in RELATIONS:
            counts = Counter(f.target for f in seen if f.relation == rel.name)
            mode[rel.name] = counts.most_common(1)[0][0] if counts else None
        return sum(f.target == mode[f.relation] for f in facts) / len(facts)

    def __repr__(self) -> str:
        return (f"World(seed={self.seed}, {len(self.people)} people, "
                f"{len(self.relations)} relations, {len(self)} facts, "
                f"{len(self.general)} general sentences)")


def _fact(person: str, rel: Relation, rng: random.Random, filler: str | None = None) -> Fact:
    """One fact of `person`: a uniformly drawn object of `rel`, under every template."""
    filler = filler if filler is not None else rng.choice(FILLERS)
    return Fact(
        subject=person,
        relation=rel.name,
        target=rng.choice(rel.objects),
        prompt=rel.requests[0],
        paraphrases=rel.requests[1:],
        questions=(rel.question,),
        completions=(f"{{}} {filler} {rel.pronoun}",),
        held_out=rel.held_out,
    )


def _with_neighbors(base: list[Fact], rng: random.Random, k_same_relation: int = 5) -> list[Fact]:
    """Attach neighbours: the subject's other facts and k facts of the same relation."""
    by_subject: dict[str, list[Fact]] = {}
    by_relation: dict[str, list[Fact]] = {}
    for f in base:
        by_subject.setdefault(f.subject, []).append(f)
        by_relation.setdefault(f.relation, []).append(f)
    out = []
    for f in base:
        same_subject = [g for g in by_subject[f.subject] if g is not f]
        pool = [g for g in by_relation[f.relation] if g.subject != f.subject]
        same_relation = rng.sample(pool, min(k_same_relation, len(pool)))
        out.append(f.with_neighbors(tuple(same_subject + same_relation)))
    return out
