"""One colour per policy, everywhere: every plot of the project takes its colours from here.

Known names (cache, prefetch, placement, scheduler policies and the demo's runs) have fixed
colours; Belady's oracle is always dashed black; any other name gets a colour from its name alone
(the same name, the same colour, whatever else is on the plot).
"""

from __future__ import annotations

import zlib
from typing import Any

_TAB = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"]

COLORS: dict[str, str] = {
    # cache policies (and the demo's runs named after them)
    "lru": "#1f77b4", "lfu": "#17becf", "fifo": "#8c564b", "lifo": "#ff7f0e",
    "priority": "#e377c2", "keep_predicted": "#2ca02c", "belady": "#000000",
    "all-resident": "#7f7f7f", "full-memory": "#7f7f7f",
    "emoe": "#2ca02c", "emoe-predict": "#2ca02c", "emoe-reroute": "#98df8a",
    "emoe_a": "#2ca02c", "emoe_a-reroute": "#98df8a", "emoe_task": "#d62728",
    "emoe_task-reroute": "#ff9896", "on-demand": "#bcbd22",
    # schedulers
    "fcfs": "#1f77b4", "spf": "#9467bd", "emoe_sched": "#2ca02c",
    # placements
    "contiguous": "#7f7f7f", "round_robin": "#bcbd22", "greedy": "#1f77b4", "anticorr": "#ff7f0e",
    "eplb": "#2ca02c", "rebalance": "#9467bd", "exhaustive": "#000000",
}


#: the policy keys of a run, most telling first: a run's policy is the first of these it sets
POLICY_KEYS = ("policy.cache", "policy.prefetch", "policy.scheduler", "policy.placement")

#: markers given in turn to the series of one plot, so lines that coincide stay visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def policy_of(name: Any) -> str:
    """The policy a series name stands for: the name itself when it is a known policy (or a run
    a driver named after one), else the value of the first ``policy.*`` key in a ``k=v k=v``
    label (``policy.cache=lru cluster.expert_budget_fraction=0.25`` -> ``lru``), else the name;
    ``a+b`` (a cache policy with a prefetcher) counts as its first known part."""
    key = str(name)
    if key in COLORS:
        return key
    if "=" in key:
        pairs = dict(t.partition("=")[::2] for t in key.split() if "=" in t)
        for k in POLICY_KEYS:
            if k in pairs:
                return policy_of(pairs[k])
    for part in key.split("+"):
        if part in COLORS:
            return part
    return key


def color(name: Any) -> str:
    """The colour of a policy (or of a run, through :func:`policy_of`): the one palette of every
    plot; a stable colour from the name alone for names not listed."""
    key = policy_of(name)
    if key in COLORS:
        return COLORS[key]
    return _TAB[zlib.crc32(key.encode()) % len(_TAB)]


def line_style(name: Any) -> dict[str, Any]:
    """matplotlib keyword arguments for a line of ``name`` (Belady: dashed black, thicker)."""
    if policy_of(name) in ("belady", "exhaustive"):
        return {"color": "#000000", "linestyle": "--", "linewidth": 2.0}
    return {"color": color(name)}


def label(name: Any) -> str:
    return f"{name} (oracle)" if str(name) in ("belady", "exhaustive") else str(name)


#: short names for the keys that label runs (anything else: its last dotted part)
SHORT_KEYS = {"cluster.expert_budget_fraction": "memory", "workload.rate_rps": "rate",
              "workload.num_requests": "requests", "cluster.expert_budget_bytes": "memory bytes"}


def short_label(values: dict[str, Any]) -> str:
    """A run's short name from the keys that vary between the runs of a report: a policy key
    gives its value alone (``lru``), any other key ``name value`` (``memory 0.25``)."""
    parts = []
    for k, v in values.items():
        v = f"{v:g}" if isinstance(v, float) else str(v)
        if k.startswith("policy.") and k.count(".") == 1:
            parts.append(v)
        else:
            parts.append(f"{SHORT_KEYS.get(k, k.rsplit('.', 1)[-1])} {v}")
    return ", ".join(parts)
