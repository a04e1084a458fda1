"""excise.locate: where a fact lives.

    trace = excise.locate.causal_trace(model, fact)          # ROME-style noised subject
    patch = excise.locate.activation_patching(model, fact)   # every granularity
    attr = excise.locate.attribution_patching(model, fact)   # first-order, one backward
    fish = excise.locate.fisher(model, forget=[fact], retain=world.retain_set(fact))

Each returns a `Localization`: `top(k, kind=)`, `peak(kind)`, `plot()`, `save()`.
"""

from excise.locate.activation_patching import activation_patching
from excise.locate.attribution import attribution_patching
from excise.locate.causal_trace import TraceConfig, TraceMeta, causal_trace, trace_one_at_a_time
from excise.locate.fisher import FisherConfig, fisher, fisher_diagonal
from excise.locate.localization import Localization, Scored
from excise.locate.site import EditSite, edit_site

# In reading order (the API reference follows it): the methods, what they return, their configs, the helpers.
__all__ = ["causal_trace", "activation_patching", "attribution_patching", "fisher", "edit_site",
           "Localization", "Scored", "EditSite", "TraceConfig", "TraceMeta", "FisherConfig", "fisher_diagonal", "trace_one_at_a_time"]
