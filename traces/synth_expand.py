"""The expansion of DERIVED generator parameters (:mod:`traces.synth_derive` writes them): a derived
file holds the recipe (``derivation``: source name, eps, layer maps, ``parent`` and ``channel`` per
layer and expert), not the counts; :func:`expand` rebuilds the counts from the source's fitted
counts when the file is loaded (:func:`traces.synth_params.params_from_dict`).

Below both the loader and the derivation, so that neither imports the other: it reads no file
(the loader hands it the source's raw parameters) and imports only numpy and ``sim.common``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sim.common.errors import MoesimError


def derived_counts(pc_s: np.ndarray, tc_s: np.ndarray, der: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Source counts (Ls, Es), (Ls-1, Es, Es) -> target counts (Lt, Et), (Lt-1, Et, Et) float64."""
    parent = np.asarray(der["parent"], dtype=np.int64)  # (Lt, Et)
    channel = np.asarray(der["channel"], dtype=np.int64)  # (Lt, Et)
    pop_src, trans_src = der["layer_pop_src"], der["layer_trans_src"]
    eps = float(der["coherence_eps"])
    Lt, Et = parent.shape
    m = Et // pc_s.shape[1]
    pc = np.stack([pc_s[pop_src[l]][parent[l]] / m for l in range(Lt)])  # (Lt, Et)
    tc = np.empty((max(Lt - 1, 0), Et, Et))
    for l in range(Lt - 1):
        same = channel[l][:, None] == channel[l + 1][None, :]  # (Et, Et)
        q = np.where(same, 1.0 - eps + eps / m, eps / m)
        tc[l] = tc_s[trans_src[l]][np.ix_(parent[l], parent[l + 1])] * q / m
    return pc, tc


def check_derivation(der: Any, L: int, E: int, where: str) -> None:
    """``der`` (a file's ``derivation``) has every key, maps that fit ``L`` x ``E`` and an eps in
    0..1, or a :class:`MoesimError` naming ``where``."""
    keys = ("from", "coherence_eps", "layer_pop_src", "layer_trans_src", "parent", "channel")
    if not isinstance(der, dict) or any(k not in der for k in keys):
        raise MoesimError(f"{where}: derivation must be an object with keys {list(keys)}")
    if np.asarray(der["parent"]).shape != (L, E) or np.asarray(der["channel"]).shape != (L, E) or \
            len(der["layer_pop_src"]) != L or len(der["layer_trans_src"]) != max(L - 1, 0):
        raise MoesimError(f"{where}: derivation maps do not fit {L} layers x {E} experts")
    if not 0.0 <= float(der["coherence_eps"]) <= 1.0:
        raise MoesimError(f"{where}: derivation coherence_eps {der['coherence_eps']}, expected 0..1")


def expand(d: dict[str, Any], raw_source: Callable[[str], dict[str, Any] | None],
           where: str = "<params>") -> dict[str, Any]:
    """A derived parameter dict with its counts rebuilt from the source (a dict for
    :func:`traces.synth_params.params_from_dict`); ``raw_source(name)`` is the raw dict of the
    shipped parameter set ``name``, or None when there is none."""
    der = d.get("derivation")
    L, E = int(d["num_layers"]), int(d["num_experts"])
    check_derivation(der, L, E, where)
    src_name = str(der["from"])
    src = raw_source(src_name)
    if src is None:
        src = {"derivation": None}
    if "derivation" in src:
        raise MoesimError(f"{where}: derived from {src_name!r}, expected a fitted shipped parameter set")
    tasks = {}
    for name, t in d["tasks"].items():
        if name not in src["tasks"]:
            raise MoesimError(f"{where}: task {name!r} is not in the source {src_name!r}")
        st = src["tasks"][name]
        pc, tc = derived_counts(np.asarray(st["popularity_counts"], dtype=np.float64),
                                np.asarray(st["transition_counts"], dtype=np.float64), der)
        tasks[name] = {**t, "popularity_counts": pc, "transition_counts": tc}
    return {**d, "tasks": tasks}
