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


def color(name: Any) -> str:
    """The colour of a policy / run name (a stable one for names not listed)."""
    key = str(name)
    if key in COLORS:
        return COLORS[key]
    base = key.split("=")[-1].split(" ")[0]
    if base in COLORS:
        return COLORS[base]
    return _TAB[zlib.crc32(key.encode()) % len(_TAB)]


def line_style(name: Any) -> dict[str, Any]:
    """matplotlib keyword arguments for a line of ``name`` (Belady: dashed black, thicker)."""
    if str(name).split("=")[-1] in ("belady", "exhaustive"):
        return {"color": "#000000", "linestyle": "--", "linewidth": 2.0}
    return {"color": color(name)}


def label(name: Any) -> str:
    return f"{name} (oracle)" if str(name) in ("belady", "exhaustive") else str(name)
