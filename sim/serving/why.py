"""The why-tallies of the general walk (:class:`sim.serving.state.GpuState`'s ``iterations``,
``keys_touched``, ``keys_touched_max``, ``over_slots``, ``evicted_reused``), counted around an
iteration's decisions by :meth:`sim.serving.walk.LayerWalk.iteration`; the array fast path
counts the same with numpy (:func:`sim.serving.lru_arrays.serve_lru_iteration`'s ``why``), held
equal by tests/sim/serving/test_fast_path.py. :mod:`sim.engine.metrics` turns them into
``metrics.json``'s why-figures.

An eviction re-used within its iteration: a key is needed at most once per iteration (its
layer's step), so such an eviction shows as a miss on a key the iteration held before (resident
at its start, or prefetched during it); with nothing loaded during the iteration but its own
misses (no next-layer prefetch), a key not held at the start always misses, so those misses are
the iteration's misses less its keys not held at the start.
"""

from __future__ import annotations

from typing import Any

from sim.serving.state import GpuState


def why_begin(states: list[GpuState], need: list[list[Any]], active: list[Any],
              layer_slots: list[list[int]]) -> list[Any]:
    """Count what explains a run (see :class:`GpuState`'s why-tallies) at the start of an
    iteration served the general way: per GPU with a cache, the distinct keys it will be asked
    for (``active``) against its slots (per layer with ``layer_slots``); returns, per GPU, None or
    ``[misses so far, the active keys resident now, their number n]`` for :func:`why_end` and
    :func:`why_reused`."""
    out: list[Any] = []
    for g, st in enumerate(states):
        cache = st.cache
        if cache is None:
            out.append(None)
            continue
        a = active[g]
        n = len(a)
        st.iterations += 1
        st.keys_touched += n
        if n > st.keys_touched_max:
            st.keys_touched_max = n
        if layer_slots:
            st.over_slots += sum(len(k) > c for k, c in zip(need[g], layer_slots[st.local]))
        elif n > st.capacity:
            st.over_slots += 1
        res = cache.resident
        held = res & a if isinstance(res, set) else {k for k in a if k in res}
        out.append([cache.counts.misses, held, n])
    return out


def why_reused(why: list[Any], miss: Any) -> None:
    """A layer's misses (lists) on keys the iteration held before: evictions it re-uses."""
    for g, m in enumerate(miss):
        if m and why[g] is not None:
            held = why[g][1]
            why[g].append(sum(k in held for k in m))


def why_loaded(why: list[Any], copies: list[tuple[int, list[int], list[int]]]) -> None:
    """Keys a prefetch loaded during the iteration: held from then on."""
    for g, loaded, _ in copies:
        if why[g] is not None:
            why[g][1].update(loaded)


def why_end(states: list[GpuState], why: list[Any], listed: bool) -> None:
    """After the iteration: the misses on keys it held before (``listed``: counted layer by layer
    by :func:`why_reused`; else nothing was loaded during the iteration but its own misses, so a
    key not held at the start always missed: the misses beyond those are re-used evictions)."""
    for st, w in zip(states, why):
        if w is None:
            continue
        if listed:
            st.evicted_reused += sum(w[3:])
        else:
            st.evicted_reused += st.cache.counts.misses - w[0] - (w[2] - len(w[1]))


def book_why(st: GpuState, nres: int, n: int, reused: int) -> None:
    """A GPU's peak residents and why-tallies (see GpuState) after an array store served an
    iteration: ``nres`` keys resident now, ``n`` distinct keys asked of its cache, ``reused``
    misses on keys resident at the iteration's start."""
    if nres > st.peak_resident:  # (at most the slots: the arrays never exceed them)
        st.peak_resident = nres
    if st.cache is not None:
        st.iterations += 1
        st.keys_touched += n
        if n > st.keys_touched_max:
            st.keys_touched_max = n
        st.over_slots += n > st.capacity
        st.evicted_reused += reused
