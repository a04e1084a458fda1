"""`rome`: one rank-one update of an MLP output matrix per fact, with a deletion objective (Meng et al. 2022;
deletion objectives after Patil et al. 2023; `excise.edit.rome`). Several facts are edited one after
another and recorded as one edit."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from excise.edit.covariance import second_moment
from excise.edit.record import recording
from excise.edit.rome import RomeConfig, rome
from excise.methods.base import Method
from excise.methods.rank_one import DamageWatch, SiteConfig, site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RomeMethodConfig(SiteConfig):
    """Where and with which objective; the rank-one update's own settings are RomeConfig's defaults."""


class Rome(Method):
    name = "rome"
    label = "ROME"
    summary = "ROME rank-one update per fact, deletion objective (head-projection unlikelihood by default)"
    Config = RomeMethodConfig
    reads = ("sample", "layer")
    source = "Meng et al. 2022 (kmeng01/rome); Patil et al. 2023's deletion objectives"

    def run(self, model, facts, context, config, mask):
        where = site(model, facts, context, config, self.name)
        shared = [s for s, n in Counter(f.subject for f in facts).items() if n > 1]
        if shared and where.position == "subject_last":
            log.warning("rome writes one value per subject key; %d subject(s) have several facts here (e.g. %r), "
                        "so later edits overwrite earlier ones (on the organism 0.0-0.5 of a person's 6 facts "
                        "stayed recalled); for whole-person deletion use npo", len(shared), shared[0])
        rome_config = RomeConfig(layer=where.layer, objective=config.objective, position=where.position)
        watch = DamageWatch(model, facts, context, config, self.name)
        C = second_moment(model, where.layer, where.sample, progress=config.progress)   # the unedited model's
        done = 0
        with recording(model, "rome", asdict(rome_config), facts) as box:    # as rome_each: one record, C once
            for fact in tqdm(facts, desc="rome", disable=not config.progress):
                rome(model, fact, rome_config, C=C)
                done += 1
                if watch.check(model, done) and done < len(facts):
                    log.warning("rome: stopped after %d of %d facts (on_damage='stop')", done, len(facts))
                    break
        record = box["record"]
        record.meta |= where.meta | {"damage": watch.meta(), "facts_edited": done}
        return record


METHOD = Rome()
