"""The schema of the ``demo`` command (:mod:`sim.app.demo`; values: ``conf/demo.yaml``, which starts its
``defaults`` with ``demo_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.world.config import SimConfig


@dataclass
class DemoAppConfig(SimConfig):
    """The simulator's keys, plus ``runs``: run name -> the simulator keys it sets (dotted), on
    top of the rest of the config; every run sees the same requests and the same routing."""

    runs: dict[str, Any] = field(default_factory=dict)
    #: also replay the runs' routing through ``moesim cache`` (hit rate vs memory, eMoE rerouting)
    replay: bool = True
