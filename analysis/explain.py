"""One sentence that names a run's bottleneck, from the figures its ``metrics.json`` carries
(the simulator's ``why_metrics`` in sim/engine/metrics.py; the replay's in sim/replay/why.py).
Reads a metrics dict only; imports nothing of the simulator.

The figures (per run): ``busy_share`` B (share of simulated time the replicas ran iterations;
the rest they waited for requests), ``fetch_stall_share`` S (share of the GPUs' iteration time
their layers waited for copies), ``host_link_utilisation.max`` U (the busiest GPU's host link:
its bytes over its bandwidth, over simulated time), ``distinct_experts_per_iteration.mean`` W
against ``cache_slots`` C, ``iterations_over_slots`` O (share of iterations, per cache, whose
working set exceeded the slots), ``evictions_reused_share`` R (evictions of an expert the same
iteration used later), ``hit_rate`` H, and ``prefetch`` (issued, used).

:func:`bottleneck_sentence`, the rules, first that applies (why, from the physics):

1. **Nothing copied** (no accesses, or no miss and no prefetch): every expert is resident, so an
   iteration is attention, gating and expert compute: "compute-bound (GPU busy B %)"; with B
   under 50 % the GPU mostly waits for requests and the sentence says so.
2. **Prefetch floods the link**: more than half the prefetched experts were never used, prefetch
   is at least half of what the link carried (``prefetched >= loads / 2``), and copies matter
   (S >= 25 % or U >= 90 %): the wasted prefetch bytes, not the demand misses, occupy the link.
3. **Copies set the time** (S >= 50 %: layers wait for copies more than half of the iteration,
   or U >= 90 %: the link has no spare time, so any further copy queues):

   a. the working set exceeds the slots (W > C, O >= 50 %): an iteration touches its W experts
      once each in layer order, so a cache of C < W slots cannot hold them until they come round
      again; with LRU on a cycle longer than the cache every access misses. The sentence gives W,
      C, the hit rate, R where it is over 10 % (the victims are experts the same iteration still
      needs), and U.
   b. else U >= 90 %: the host link is saturated: bandwidth, not compute, sets TPOT.
   c. else: the link has spare time but each miss's copy sits in the critical path of its layer
      (the latency of copies, not the bandwidth).
4. **Otherwise compute-bound**: copies cost under half the iteration time; the sentence gives S,
   H, U and B.

An offloaded run (``offload`` in its metrics: experts computed on the host CPU, or layer
streaming) is said first by :func:`offload_sentence`: where the experts ran (the share of missed
experts computed on the CPU, per layer where not every layer is the same), the bytes streamed, and
which of the three bounded its steps (``offload.bound``: the GPUs' wait for copies, the host's
expert time, the GPUs' expert time, the largest of the three sums), with all three figures.

:func:`compare_sentence` explains the gap between a simulator run's hit rate and a replay's on
the same setting (the simulator's ``hits + late_prefetch_hits`` count where the replay counts a
hit: a prefetched expert in flight is a hit to the replay, which has no clock). Under 2 points
apart they agree. Else the reasons, each stated where its figures show it:

- working set per slot: the simulator's iteration is a batch of requests at every layer (the
  union over the batch) against its slots; the replay's is one token (or one batch) against its
  per-layer caches. The side with more distinct experts per slot misses more.
- scope: a global cache (one per GPU) is swept in layer order every iteration; the replay keeps
  one cache per layer.
- evictions re-used within the iteration, where either side's share is over 10 %.
- prefetches still in flight when needed (``late_prefetch_hits``), if the simulator has any.
"""

from __future__ import annotations

from typing import Any

#: thresholds of the rules (see the module docstring)
STALL_HIGH = 0.5
STALL_SOME = 0.25
LINK_SATURATED = 0.9
WASTE_HIGH = 0.5
OVER_SLOTS = 0.5
REUSED_NOTE = 0.1
AGREE = 0.02


def _get(m: dict[str, Any], key: str, *sub: str) -> Any:
    try:
        v = m[key]
        for s in sub:
            v = v[s]
    except (KeyError, TypeError):
        name = ".".join((key, *sub))
        raise ValueError(f"metrics lack {name!r} (a run from before the figures that say why?)") from None
    return v


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x - round(x)) < 0.05 or x >= 100 else f"{x:,.1f}"


def _policy(m: dict[str, Any]) -> str:
    p = m.get("config", {}).get("policy", {}) if isinstance(m.get("config"), dict) else {}
    name = p.get("cache") or m.get("policy") or "cache"
    pf = p.get("prefetch") or m.get("prefetch")
    label = str(name).upper() if len(str(name)) <= 4 else str(name)
    return f"{label} + {pf}" if pf and pf != "none" else label


def _hits(m: dict[str, Any]) -> str:
    h = float(_get(m, "hit_rate"))
    return "every access misses" if h < 0.005 else f"{_pct(h)} of accesses hit"


BOUND_WORDS = {"copy": "waiting for copies over the host link", "cpu": "the host CPU's experts",
               "gpu": "the GPU's own experts"}


def offload_sentence(m: dict[str, Any]) -> str | None:
    """Where an offloaded run's experts ran and what bounded its steps; None for a run that
    neither computes experts on the host nor streams layers."""
    off = m.get("offload")
    if not isinstance(off, dict) or not (off.get("experts_on_cpu") or off.get("stream_bytes")):
        return None
    parts = []
    n_cpu = int(off.get("experts_on_cpu", 0))
    if n_cpu:
        misses = int(m.get("misses", 0)) or n_cpu
        by_layer = [int(x) for x in off.get("experts_on_cpu_by_layer", [])]
        on = [i for i, x in enumerate(by_layer) if x]
        where = f" (layers {on[0]}-{on[-1]})" if on and len(on) < len(by_layer) else ""
        parts.append(f"{_pct(n_cpu / misses)} of the missed experts ran on the host CPU{where}")
    if off.get("stream_bytes"):
        parts.append(f"layer streaming copied {int(off['stream_bytes']) / 1e9:,.1f} GB of weights")
    bound = str(off.get("bound", "gpu"))
    wait, host, gpu = (float(off.get(k, 0)) for k in ("copy_stall_s", "host_expert_s", "gpu_expert_s"))
    figs = f"copy wait {wait:.3g} s, host experts {host:.3g} s, GPU experts {gpu:.3g} s"
    said = BOUND_WORDS.get(bound, bound)
    return f"{_policy(m)}: {'; '.join(parts)}; the steps are bound by {said} ({figs})"


def bottleneck_sentence(metrics: dict[str, Any]) -> str:
    """The run's bottleneck in one sentence, with its numbers (rules: the module docstring)."""
    m = metrics
    said = offload_sentence(m)
    if said is not None:
        return said
    accesses, misses = int(_get(m, "accesses")), int(_get(m, "misses"))
    prefetched = int(m.get("prefetched", 0))
    B = float(_get(m, "busy_share"))
    S = float(_get(m, "fetch_stall_share"))
    U = float(_get(m, "host_link_utilisation", "max"))
    W = float(_get(m, "distinct_experts_per_iteration", "mean"))
    C = float(_get(m, "cache_slots"))
    O = float(_get(m, "iterations_over_slots"))
    R = float(_get(m, "evictions_reused_share"))
    idle = "" if B >= 0.5 else f"; it waits for requests {_pct(1 - B)} of the time"
    if accesses == 0 or (misses == 0 and prefetched == 0):
        what = "all experts resident" if accesses == 0 else \
            f"every access hits ({_num(W)} experts per iteration fit {_num(C)} slots)"
        return f"{what}: compute-bound (GPU busy {_pct(B)}){idle}"
    pf = m.get("prefetch") if isinstance(m.get("prefetch"), dict) else {}
    issued, used = int(pf.get("issued", prefetched)), int(pf.get("used", 0))
    loads = int(m.get("loads", misses + prefetched))
    if issued and (issued - used) / issued > WASTE_HIGH and prefetched * 2 >= loads and \
            (S >= STALL_SOME or U >= LINK_SATURATED):
        gb = (issued - used) * int(m.get("expert_bytes", 0)) / 1e9
        wasted = f" ({gb:,.1f} GB wasted)" if gb else ""
        return (f"{_policy(m)}: prefetch floods the host link: {issued - used:,} of {issued:,} "
                f"prefetched experts were never used{wasted}; the link is busy {_pct(U)} of the time "
                f"and layers wait for copies {_pct(S)} of the iteration")
    if S >= STALL_HIGH or U >= LINK_SATURATED:
        if W > C and O >= OVER_SLOTS:
            order = " in layer order" if m.get("cache_scope") == "global" else ""
            reused = f"; {_pct(R)} of evictions throw out an expert the same iteration needs later" \
                if R > REUSED_NOTE else ""
            return (f"{_policy(m)}: each iteration touches {_num(W)} experts{order} with {_num(C)} "
                    f"slots: {_hits(m)}{reused}; the host link is busy {_pct(U)} of the time")
        if U >= LINK_SATURATED:
            return (f"{_policy(m)}: the host link is saturated (busy {_pct(U)}): copies, not compute, "
                    f"set TPOT (layers wait for copies {_pct(S)} of the iteration, {_hits(m)})")
        return (f"{_policy(m)}: layers wait for copies {_pct(S)} of the iteration though the host link "
                f"is busy only {_pct(U)}: each miss's copy latency sits in its layer's critical path "
                f"({_hits(m)})")
    return (f"{_policy(m)}: compute-bound: layers wait for copies only {_pct(S)} of the iteration "
            f"({_hits(m)}, host link busy {_pct(U)}, GPU busy {_pct(B)}){idle}")


def compare_sentence(sim_metrics: dict[str, Any], replay_metrics: dict[str, Any]) -> str:
    """Why the simulator's hit rate and the replay's differ on the same setting (rules: the module
    docstring), in one sentence."""
    s, r = sim_metrics, replay_metrics
    acc = int(_get(s, "accesses"))
    late = int(s.get("late_prefetch_hits", 0))
    hs = (int(_get(s, "hits")) + late) / acc if acc else 1.0
    hr = float(_get(r, "hit_rate"))
    head = f"{_policy(s)} hit rate: simulator {_pct(hs)}, replay {_pct(hr)}"
    if abs(hs - hr) < AGREE:
        return f"{head}: they agree"
    Ws, Cs = float(_get(s, "distinct_experts_per_iteration", "mean")), float(_get(s, "cache_slots"))
    Wr, Cr = float(_get(r, "distinct_experts_per_iteration", "mean")), float(_get(r, "cache_slots"))
    unit = r.get("iteration_unit", "token")
    rs, rr = (Ws / Cs if Cs else float("inf")), (Wr / Cr if Cr else float("inf"))
    why = []
    if rs > rr * 1.1:
        why.append(f"the simulator interleaves a batch of requests, so an iteration touches the "
                   f"union over the batch: {_num(Ws)} experts against {_num(Cs)} slots "
                   f"({rs:.2f} per slot), where the replay serves one {unit} at a time: "
                   f"{_num(Wr)} experts against {_num(Cr)} slots ({rr:.2f} per slot)")
    elif rr > rs * 1.1:
        why.append(f"the replay's {unit} touches more experts per slot ({_num(Wr)} against "
                   f"{_num(Cr)}, {rr:.2f}) than the simulator's iteration ({_num(Ws)} against "
                   f"{_num(Cs)}, {rs:.2f})")
    ss, sr = s.get("cache_scope"), r.get("cache_scope")
    if ss != sr and ss and sr:
        kind = "one per GPU, swept in layer order every iteration" if ss == "global" else "one per layer"
        why.append(f"the simulator's cache is {ss} ({kind}), the replay's {sr.replace('_', '-')}")
    es, er = float(s.get("evictions_reused_share", 0.0)), float(r.get("evictions_reused_share", 0.0))
    if max(es, er) > REUSED_NOTE:
        why.append(f"{_pct(es)} of the simulator's evictions throw out an expert its iteration needs "
                   f"later (replay: {_pct(er)})")
    if late:
        why.append(f"{late:,} prefetched experts were still in flight when needed (the simulator's "
                   f"late_prefetch_hits, counted with its hits here as the replay does)")
    if not why:
        why.append("neither the working set per slot, the cache scope nor re-used evictions "
                   "differ: the gap comes from what the two serve (requests and their order)")
    return f"{head}: " + "; ".join(why)
