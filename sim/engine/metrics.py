"""Metrics of a simulation: ``metrics.json`` (simulated quantities only) and per-request Parquet.

``metrics.json`` keys (one schema shared with realrun):

- ``requests_completed``, ``requests_total``, ``output_tokens``, ``sim_time_s`` (first arrival to
  last completion), ``tokens_per_s`` (output tokens / sim_time_s), ``processed_tokens_per_s``
- ``ttft_s``, ``tpot_s``, ``e2e_s``: ``{p50, p90, p99, mean}``; ``slo``: the TTFT/TPOT targets and
  ``slo_attainment`` (share of requests meeting both)
- the shared cache-counts record (:class:`sim.world.facts.CacheCounts`, summed over the GPUs with a
  cache policy, counted by the policies themselves, the timing telling late prefetch hits
  apart): ``accesses`` (= hits + late_prefetch_hits + misses + rerouted), ``hits`` (resident and
  landed when needed), ``late_prefetch_hits`` (a prefetched expert still in flight when needed:
  its wait is in ``fetch_stall_s``), ``misses``, ``prefetch_skipped``,
  ``hit_rate``, ``rerouted``, ``streamed`` (misses not kept because the step needed more keys than
  the budget holds: they pass through a one-layer staging buffer), ``evictions``, ``prefetched``,
  ``loads``, ``h2d_bytes`` (checked equal to what the host links carried); ``expert_accesses``,
  ``expert_misses``, ``expert_streamed`` repeat them for one release
- ``fetch_stall_s`` (sum over GPUs of time layers waited on copies)
- ``peak_expert_bytes_per_gpu``, ``expert_budget_bytes_per_gpu``, ``kv_peak_tokens``,
  ``kv_capacity_tokens``
- ``load_imbalance`` (max / mean expert tokens per GPU over the run), ``load_imbalance_iter``
  (mean over iterations and layers of max / mean), ``gpu_expert_tokens``
- ``routing_fidelity`` (expert-token computes / assignments the traces recorded)
- why (read by ``analysis/explain.py``): ``iteration_time_s`` (per replica, simulated time in
  its iterations), ``busy_share`` (that over ``sim_time_s``, mean over replicas: the rest the
  replica waited for requests), ``host_link_busy_s`` (per GPU: the link's bytes, per-copy overhead
  included, over its bandwidth: exact for a work-conserving link, whose transfers together always
  move at full bandwidth), ``host_link_utilisation`` (``{mean, max}`` over GPUs of busy / sim_time;
  above 1: copies were still queued when the last request finished), ``fetch_stall_share`` (the
  GPUs' stalls over their replicas' iteration time), ``expert_compute_share`` (``gpu_busy_s``
  over the same), ``cache_scope``, ``cache_slots`` (mean over GPUs with a cache),
  ``distinct_experts_per_iteration`` (``{mean, max}`` over (GPU with a cache, iteration) of the
  distinct keys the cache was asked for: the iteration's working set), ``iterations_over_slots``
  (share of those iterations, per layer with ``per_layer`` scope, whose working set exceeded the
  slots), ``evictions_reused`` (misses on keys resident at the iteration's start or prefetched
  during it: each an eviction of an expert the same iteration used later) and
  ``evictions_reused_share`` (of ``evictions``)
- ``prefetch``: issued, used (late: still in flight when used), evicted_unused, pending, skipped,
  bytes_wasted (:func:`prefetch_report`); ``preemptions``, ``tokens_recomputed``, ``requests_rerouted``,
  ``faults``, ``binding`` (overflow report), ``cost_model`` (out-of-range/fallback counts)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sim.common.errors import MoesimError
from sim.common.jsonout import strict_json
from sim.engine.simulation import Simulation
from sim.world.facts import CacheCounts, stable_float

if TYPE_CHECKING:  # imported when the metrics are computed, after the run: not at its start
    import pandas as pd


def _pct(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": _f(p50), "p90": _f(p90), "p99": _f(p99), "mean": _f(np.mean(x))}


_f = stable_float


def request_columns(sim: Simulation) -> dict[str, np.ndarray]:
    """Per request, the columns of ``requests.parquet`` (:func:`request_table`) as numpy arrays:
    what :func:`compute_metrics` reads, without pandas."""
    r = sim.req
    ttft = r.first_token_s - r.arrival_s
    denom = np.maximum(r.output - 1, 1)
    tpot = np.where(r.output > 1, (r.finish_s - r.first_token_s) / denom, 0.0)
    s = sim.cfg.serving
    return {
        "request_id": r.request_id, "task": r.task, "arrival_s": r.arrival_s,
        "prompt_tokens": r.prompt, "output_tokens": r.output,
        "first_token_s": r.first_token_s, "finish_s": r.finish_s,
        "ttft_s": ttft, "tpot_s": tpot, "e2e_s": r.finish_s - r.arrival_s,
        "slo_met": (ttft <= s.ttft_slo_s) & (tpot <= s.tpot_slo_s),
        "replica": r.replica, "reroutes": r.reroutes, "preemptions": r.preemptions,
        "completions": r.completions, "processed_tokens": r.processed,
        "bound_trace_tokens": r.length,
    }


def request_table(sim: Simulation) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(request_columns(sim))


def prefetch_report(states: list[Any], counts: CacheCounts, eb: int) -> dict[str, int]:
    """What the prefetches came to: ``issued`` (experts a prefetch loaded: ``prefetched``) =
    ``used`` (a layer needed it while resident: ``late`` of them still in flight then) +
    ``evicted_unused`` (evicted before any layer used it; its copy is ``bytes_wasted``) +
    ``pending`` (resident, not used by the end; a prefetch's keys skipped for want of a victim are
    ``skipped``, not issued). Counted on GPUs whose caches were never replaced by a fault."""
    used = evicted = pending = 0
    for st in states:
        used += st.prefetch_used
        evicted += st.prefetch_evicted_unused
        res = st.cache.resident if st.cache is not None else ()
        for k in st.inflight:  # never used: still resident, or evicted and never needed again
            if k in res:
                pending += 1
            else:
                evicted += 1
    return {"issued": int(counts.prefetched), "used": int(used),
            "late": int(counts.late_prefetch_hits), "evicted_unused": int(evicted),
            "pending": int(pending), "skipped": int(counts.prefetch_skipped),
            "bytes_wasted": int(evicted * eb)}


def compute_metrics(sim: Simulation) -> dict[str, Any]:
    cols = request_columns(sim)  # (numpy: a simulation's metrics import no pandas)
    done = cols["completions"] > 0  # the requests completed
    tl, plan = sim.tallies, sim.plan
    states = [st for rep in sim.replicas for st in rep.states]
    counts = CacheCounts.total(st.counts() for st in states)
    sim_time = float(tl.last_finish_s - (sim.req.arrival_s.min() if sim.R else 0.0))
    out_tokens = int(cols["output_tokens"][done].sum())
    gpu_tokens = np.rint(tl.gpu_tokens.ravel())  # (GPUs,) expert-token assignments
    recorded = int(tl.recorded_le.sum())
    eb = plan.expert_bytes
    h2d = int(sum(st.link.bytes_total for st in states))
    record = counts.record(eb)
    on_cpu = int(sum(st.cpu_experts for st in states))  # misses computed on the host: no copy
    streamed = int(sum(st.stream_bytes for st in states))  # layer streaming's weights
    if (counts.loads - on_cpu) * int(eb) != h2d - streamed:
        raise MoesimError(f"internal: the links moved {h2d - streamed} bytes of experts, the caches "
                          f"loaded {counts.loads} experts of {eb} bytes, {on_cpu} of them ran on "
                          f"the host")
    p = sim.cfg.policy
    return {
        "requests_total": int(sim.R),
        "requests_completed": int(done.sum()),
        "requests_completed_more_than_once": int((cols["completions"] > 1).sum()),
        "output_tokens": out_tokens,
        "processed_tokens": int(tl.tokens_processed),
        "sim_time_s": _f(sim_time),
        "tokens_per_s": _f(out_tokens / sim_time) if sim_time > 0 else 0.0,
        "processed_tokens_per_s": _f(tl.tokens_processed / sim_time) if sim_time > 0 else 0.0,
        "ttft_s": _pct(cols["ttft_s"][done]),
        "tpot_s": _pct(cols["tpot_s"][done]),
        "e2e_s": _pct(cols["e2e_s"][done]),
        "slo": {"ttft_s": _f(sim.cfg.serving.ttft_slo_s), "tpot_s": _f(sim.cfg.serving.tpot_slo_s)},
        "slo_attainment": _f(cols["slo_met"][done].mean()) if done.any() else 0.0,
        **record,
        # the names before the shared record (kept for one release; see the README)
        "expert_accesses": record["accesses"],
        "expert_misses": record["misses"],
        "expert_streamed": record["streamed"],
        "fetch_stall_s": _f(sum(st.stall_s for st in states)),
        "peak_expert_bytes_per_gpu": [int(st.peak_resident * eb) for st in states],
        "expert_budget_bytes_per_gpu": [int(st.capacity * eb) for st in states],
        "expert_bytes": int(eb),
        "kv_peak_tokens": [int(rep.kv_peak) for rep in sim.replicas],
        "kv_capacity_tokens": int(plan.kv_capacity_tokens),
        "gpu_expert_tokens": [int(x) for x in gpu_tokens],
        "gpu_busy_s": [_f(st.busy_s) for st in states],
        "load_imbalance": _f(gpu_tokens.max() / gpu_tokens.mean()) if gpu_tokens.sum() else 1.0,
        "load_imbalance_iter": _f(tl.iter_imbalance_sum / tl.iter_layers) if tl.iter_layers else 1.0,
        "routing_fidelity": _f(tl.computed_le.sum() / recorded) if recorded else 1.0,
        "prefetch": prefetch_report(states, counts, eb),
        "iterations": int(sum(rep.iterations for rep in sim.replicas)),
        **why_metrics(sim, states, sim_time, record["evictions"]),
        **offload_metrics(sim, states, h2d, streamed, on_cpu),
        "preemptions": int(tl.preemptions),
        "tokens_recomputed": int(tl.tokens_recomputed),
        "requests_rerouted": int(tl.requests_rerouted),
        "faults": tl.fault_log,
        "binding": sim.binding_report,
        "cost_model": sim.cost.report(),
        "config": {"model": sim.model.name, "hardware": sim.cfg.hardware.name,
                   "gpus": int(plan.topo.num_gpus), "replicas": int(plan.topo.num_replicas),
                   "expert_parallel": int(plan.topo.expert_parallel),
                   "policy": {"cache": p.cache, "prefetch": p.prefetch, "placement": p.placement,
                              "scheduler": p.scheduler},
                   "seed": int(sim.cfg.seed)},
    }


def offload_metrics(sim: Simulation, states: list, h2d: int, streamed: int, on_cpu: int
                    ) -> dict[str, Any]:
    """Where the experts ran and what bounded the steps, for a run that offloads (experts
    computed on the host, layer streaming, or a host that caps the link); nothing otherwise (the
    metrics of other runs are unchanged). ``bound``: the largest of the time GPUs waited for
    copies (``copy``), the host's expert time (``cpu``) and the GPUs' expert time (``gpu``)."""
    o = sim.cfg.offload
    if o.expert_exec == "copy" and not o.layer_streaming and sim.cfg.host.name == "none":
        return {}
    stall = sum(st.stall_s for st in states)
    cpu_s = sum(st.cpu_s for st in states)
    # busy holds max(gpu, host) where a layer ran experts on the host: less the host's excess
    gpu_s = sum(st.busy_s for st in states) - sum(st.host_excess_s for st in states)
    times = {"copy": stall, "cpu": cpu_s, "gpu": max(gpu_s, 0.0)}
    host = sim.walk.host
    return {"offload": {
        "expert_exec": o.expert_exec, "host_memory": o.host_memory,
        "layer_streaming": bool(o.layer_streaming), "host": sim.cfg.host.name,
        "host_link_bytes_per_s": _f(sim.cost.host_link_bytes_per_s),
        "experts_on_cpu": on_cpu,
        "experts_on_cpu_by_layer": [int(x) for x in host.by_layer] if host is not None else [],
        "host_expert_s": _f(cpu_s), "copy_stall_s": _f(stall), "gpu_expert_s": _f(max(gpu_s, 0.0)),
        "expert_copy_bytes": int(h2d - streamed), "stream_bytes": streamed,
        "bound": max(times, key=lambda k: times[k])}}


def why_metrics(sim: Simulation, states: list, sim_time: float, evictions: int) -> dict[str, Any]:
    """The figures that say why (read by analysis/explain.py; see the module docstring)."""
    plan = sim.plan
    iter_s = {rep.index: rep.iteration_time_s for rep in sim.replicas}
    gpu_iter_s = [iter_s[rep.index] for rep in sim.replicas for _ in rep.states]
    link_busy = [0.0 if st.link.infinite else (st.link.bytes_total + st.pad_bytes) / st.link.bytes_per_s
                 for st in states]
    util = [b / sim_time if sim_time > 0 else 0.0 for b in link_busy]
    cached = [st for st in states if st.cache is not None]
    its = sum(st.iterations for st in cached)
    per_layer = bool(plan.layer_slots)
    reused = int(sum(st.evicted_reused for st in cached))
    total_iter = float(sum(gpu_iter_s))
    return {
        "iteration_time_s": [_f(iter_s[rep.index]) for rep in sim.replicas],
        "busy_share": _f(sum(iter_s.values()) / (len(iter_s) * sim_time)) if sim_time > 0 else 0.0,
        "host_link_busy_s": [_f(b) for b in link_busy],
        "host_link_utilisation": {"mean": _f(float(np.mean(util))) if util else 0.0,
                                  "max": _f(max(util)) if util else 0.0},
        "fetch_stall_share": _f(sum(st.stall_s for st in states) / total_iter) if total_iter > 0 else 0.0,
        "expert_compute_share": _f(sum(st.busy_s for st in states) / total_iter) if total_iter > 0 else 0.0,
        "cache_scope": "per_layer" if per_layer else "global",
        "cache_slots": _f(float(np.mean([st.capacity for st in cached]))) if cached else 0.0,
        "distinct_experts_per_iteration": {
            "mean": _f(sum(st.keys_touched for st in cached) / its) if its else 0.0,
            "max": int(max((st.keys_touched_max for st in cached), default=0))},
        "iterations_over_slots": _f(sum(st.over_slots for st in cached)
                                    / (its * (plan.L if per_layer else 1))) if its else 0.0,
        "evictions_reused": reused,
        "evictions_reused_share": _f(reused / evictions) if evictions else 0.0,
    }


def metrics_json(metrics: dict[str, Any]) -> bytes:
    return (strict_json(metrics, indent=2, sort_keys=True) + "\n").encode()


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    m = metrics
    gb = 1e9
    return [
        ("requests completed", f"{m['requests_completed']}/{m['requests_total']}"),
        ("simulated time", f"{m['sim_time_s']:.2f} s"),
        ("output tokens/s", f"{m['tokens_per_s']:.1f}"),
        ("TTFT p50/p90/p99", "/".join(f"{m['ttft_s'][k]:.3f}" for k in ("p50", "p90", "p99")) + " s"),
        ("TPOT p50/p90/p99", "/".join(f"{m['tpot_s'][k] * 1e3:.1f}" for k in ("p50", "p90", "p99")) + " ms"),
        ("E2E p50/p90/p99", "/".join(f"{m['e2e_s'][k]:.2f}" for k in ("p50", "p90", "p99")) + " s"),
        ("SLO attainment", f"{m['slo_attainment'] * 100:.1f} %"),
        ("expert hit rate", f"{m['hit_rate'] * 100:.1f} %"),
        ("host-to-GPU bytes", f"{m['h2d_bytes'] / gb:.2f} GB"),
        ("fetch stall (sum GPUs)", f"{m['fetch_stall_s']:.2f} s"),
        ("peak expert mem/GPU", f"{max(m['peak_expert_bytes_per_gpu']) / gb:.2f} GB"),
        ("load imbalance", f"{m['load_imbalance']:.3f}"),
        ("routing fidelity", f"{m['routing_fidelity']:.3f}"),
        ("rerouted / preempted", f"{m['requests_rerouted']} / {m['preemptions']}"),
        *offload_rows(m),
    ]


def offload_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary's offloading lines (an offloaded run only): where experts ran, what bounded."""
    off = m.get("offload")
    if not off:
        return []
    return [("experts on host CPU", f"{off['experts_on_cpu']}"),
            ("expert copies / streamed", f"{off['expert_copy_bytes'] / 1e9:.2f} / "
                                         f"{off['stream_bytes'] / 1e9:.2f} GB"),
            ("steps bound by", f"{off['bound']} (wait {off['copy_stall_s']:.2f} s, host "
                               f"{off['host_expert_s']:.2f} s, GPU {off['gpu_expert_s']:.2f} s)")]


def format_table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    line = "  ".join(str(c).ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def format_summary(metrics: dict[str, Any]) -> str:
    rows = summary_rows(metrics)
    return format_table(["metric", "value"], [[a, b] for a, b in rows])
