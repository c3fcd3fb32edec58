"""Expert placement / load balancing evaluated on a routing trace (the command is
:mod:`sim.app.placement_cmd`), as Huang et al. evaluate it: plan on the first ``train_frac`` of
the prompts (trace order), evaluate on the rest.

    moesim placement trace.path=FILE [cluster.expert_parallel=8] ['policy.placements=[greedy,eplb]']
        [train_frac=0.5] [model=NAME]

The keys are the simulator's: ``policy.placements`` is the plural of ``policy.placement``,
``cluster.expert_parallel`` the GPUs a layer's experts are spread over, ``workload.max_requests``
the first N requests of the trace; ``policy.placement_args.NAME`` a placement's arguments.

Load of expert e at layer l = tokens routed to it. A GPU's load shares each replicated expert's
load equally among its replicas. Reported per policy, for both halves: ``max_over_mean`` = max GPU
load / mean GPU load per layer, averaged over layers (aggregate over the half), its worst layer,
and ``batch_max_over_mean`` = the same per batch (one prompt, or ``batch_tokens`` tokens), averaged
over batches and layers (``test_batch_worst_max_over_mean``: averaged over layers, the worst batch;
``test_batch_mean_over_max``: mean/max, averaged). The ``*_batch_split_*`` figures are the same per
batch when each batch's tokens of a replicated expert are split across its replicas as a serving
engine does, to the least-loaded replica GPU (:func:`sim.world.token_split.split_tokens`, the simulator's
rule); for single-copy placements they equal the equal-share ones. ``split`` places its redundant
experts for that split. Divided by ``cluster.expert_parallel`` these are the busiest GPU's share of
the tokens, Huang et al.'s "max device load". ``rebalance`` starts from a plan on the first half
and replans online every ``period`` test batches from the last ``window`` batches; its weight moves
are charged as copies (``moved_experts``, ``bytes_moved``). ``exhaustive`` (the oracle) is planned
on the test half itself and skipped, with the reason recorded, when too large; a lower bound for
single-copy placements on the test half (max of the mean and the heaviest expert) is always
reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.common.errors import ConfigError, MoesimError
from sim.policies.base import max_over_mean


def split_imbalance(load: np.ndarray, hold: np.ndarray) -> np.ndarray:
    """max/mean GPU load per batch and layer (B, L) when each batch's tokens ``load`` (B, L, E)
    of a replicated expert are split across its replicas (:func:`sim.world.token_split.split_tokens`);
    layers with no load count as 1."""
    from sim.world.token_split import split_tokens

    return max_over_mean(split_tokens(np.rint(load).astype(np.int64), hold).sum(axis=-2))  # (B, L)


def _per_batch(prefix: str, im: np.ndarray) -> dict[str, float]:
    """Per-batch figures from (B, L) max/mean: mean max/mean, mean mean/max, worst batch."""
    return {f"{prefix}_max_over_mean": float(im.mean()),
            f"{prefix}_mean_over_max": float((1.0 / im).mean()),
            f"{prefix}_worst_max_over_mean": float(im.mean(axis=1).max()) if len(im) else 1.0}


def batch_loads(experts: np.ndarray, batch_of: np.ndarray, nb: int, E: int) -> np.ndarray:
    """(nb, L, E) tokens per expert per batch from experts (T, L, K) and batch ids (T,)."""
    T, L, K = experts.shape
    idx = (batch_of[:, None, None] * L + np.arange(L)[None, :, None]) * E + experts  # (T, L, K)
    return np.bincount(idx.reshape(-1), minlength=nb * L * E).reshape(nb, L, E).astype(np.float64)


def _make_and_place(rec: dict[str, Any], num_gpus: int, load: np.ndarray,
                    history: np.ndarray | None = None) -> tuple[Any, Any] | None:
    """(policy, plan) for ``rec``'s policy and kwargs planned on ``load`` (after
    ``fit_history(history)`` where given and the policy learns from one). The exhaustive oracle's
    refusal (too large to enumerate) is recorded as ``rec["skipped"]`` and gives None; any other
    policy's error is raised."""
    from sim.policies import PLACEMENT

    name = rec["policy"]
    try:
        pol = PLACEMENT.make(name, num_gpus=num_gpus, **rec["kwargs"])
        if history is not None:
            pol.fit_history(history)
        return pol, pol.place(load)
    except MoesimError as exc:
        if name != "exhaustive":
            raise
        rec["skipped"] = str(exc)
        return None


def evaluate(trace: Any, policies: list[str], num_gpus: int, train_frac: float,
             batch_tokens: int | None, policy_kwargs: dict[str, Any], expert_bytes: int,
             on_step: Any = None) -> dict[str, Any]:
    """``on_step(policy)`` is called after each policy is scored (progress)."""
    from sim.policies.placement.rebalance import moves

    ex = trace.experts.astype(np.int64)  # (T, L, K)
    T, L, K = ex.shape
    E = trace.num_experts
    bounds = trace.request_bounds()
    R = len(bounds) - 1
    if R < 2:
        raise ConfigError(f"placement needs at least 2 prompts to split, trace has {R}")
    if not 0.0 < train_frac < 1.0:
        raise ConfigError(f"train_frac must be in (0, 1), got {train_frac}")
    r_split = min(max(1, int(round(R * train_frac))), R - 1)
    t_split = int(bounds[r_split])
    if batch_tokens is None:
        batch_of = np.repeat(np.arange(R), np.diff(bounds))  # (T,) one batch per prompt
    else:
        if batch_tokens <= 0:
            raise ConfigError(f"batch_tokens must be positive, got {batch_tokens}")
        batch_of = np.concatenate([np.arange(t_split) // batch_tokens,
                                   (t_split - 1) // batch_tokens + 1
                                   + np.arange(T - t_split) // batch_tokens])
    nb = int(batch_of[-1]) + 1
    bl = batch_loads(ex, batch_of, nb, E)  # (nb, L, E)
    b_split = int(batch_of[t_split])
    train, test = bl[:b_split], bl[b_split:]
    train_load, test_load = train.sum(axis=0), test.sum(axis=0)  # (L, E)
    results = []
    for name in policies:
        kw = dict(policy_kwargs.get(name, {}) or {})
        rec: dict[str, Any] = {"policy": name, "oracle": name == "exhaustive", "kwargs": kw}
        made = _make_and_place(rec, num_gpus, test_load if name == "exhaustive" else train_load,
                               history=train)
        if made is None:
            results.append(rec)
            continue
        pol, plan = made
        A = plan.share(L, E, "placement")  # (L, E, G), once for every load below
        hold = A > 0
        tr_l, te_l = plan.imbalance(train_load, A), plan.imbalance(test_load, A)
        rec.update(train_max_over_mean=float(tr_l.mean()), train_worst_layer=float(tr_l.max()),
                   **_per_batch("train_batch", plan.imbalance(train, A)),
                   **_per_batch("train_batch_split", split_imbalance(train, hold)))
        moved = 0
        if name == "rebalance":
            # each test batch runs under the placement in force, then the policy observes it
            gl = np.zeros((L, num_gpus))
            per_batch, per_split = [], []
            cur = plan
            for t in range(len(test)):
                gl_t = cur.gpu_load(test[t], A)  # (L, G)
                gl += gl_t
                per_batch.append(max_over_mean(gl_t))
                per_split.append(split_imbalance(test[t][None], A > 0)[0])
                new = pol.observe(test[t])
                if new is not None:
                    moved += moves(cur, new)
                    cur = new
                    A = cur.share(L, E, "placement")
            agg = max_over_mean(gl)
            rec.update(test_max_over_mean=float(agg.mean()), test_worst_layer=float(agg.max()),
                       **_per_batch("test_batch", np.array(per_batch).reshape(-1, L)),
                       **_per_batch("test_batch_split", np.array(per_split).reshape(-1, L)),
                       replans=int(len(test) // pol.period))
        else:
            rec.update(test_max_over_mean=float(te_l.mean()), test_worst_layer=float(te_l.max()),
                       **_per_batch("test_batch", plan.imbalance(test, A)),  # (batches, L)
                       **_per_batch("test_batch_split", split_imbalance(test, hold)))
        slots = np.zeros((L, num_gpus), dtype=np.int64)
        for l in range(L):
            for gpus in plan.replicas[l]:
                for g in gpus:
                    slots[l, g] += 1
        rec.update(max_slots_per_gpu_layer=int(slots.max()),
                   replicas=int(slots.sum()), moved_experts=moved, bytes_moved=moved * expert_bytes)
        results.append(rec)
        if on_step is not None:
            on_step(name)
    # no single-copy placement beats this on the test half: a GPU holds at least the mean load
    # and at least the heaviest expert (per layer, averaged over layers)
    tot = test_load.sum(axis=1)  # (L,)
    lb = np.divide(np.maximum(tot / num_gpus, test_load.max(axis=1)), tot / num_gpus,
                   out=np.ones_like(tot), where=tot > 0)
    return {"num_gpus": num_gpus, "prompts": R,
            "test_single_copy_lower_bound_max_over_mean": float(lb.mean()),
            "train_prompts": r_split, "test_prompts": R - r_split,
            "train_tokens": t_split, "test_tokens": T - t_split, "batches_train": b_split,
            "batches_test": nb - b_split, "results": results}


def evaluate_load(counts: np.ndarray, policies: list[str], num_gpus: int,
                  policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Placement from a load table (per layer x expert counts, e.g. SGLang's expert-distribution
    dump): each policy plans on the whole table and is scored on it (max / mean GPU load, in
    sample). A load table has no token order, so there is no held-out half and no per-batch or
    rebalancing figure; the exhaustive oracle plans on the same table."""

    load = np.asarray(counts, dtype=np.float64)  # (L, E)
    L, E = load.shape
    results = []
    for name in policies:
        kw = dict(policy_kwargs.get(name, {}) or {})
        rec: dict[str, Any] = {"policy": name, "oracle": name == "exhaustive", "kwargs": kw}
        made = _make_and_place(rec, num_gpus, load)
        if made is None:
            results.append(rec)
            continue
        plan = made[1]
        im = plan.imbalance(load, plan.share(L, E, "placement"))  # (L,)
        rec.update(train_max_over_mean=float(im.mean()), train_worst_layer=float(im.max()),
                   replicas=int(plan.slots_used().sum()))
        results.append(rec)
    return {"num_gpus": num_gpus, "source": "load table (in sample: no token order, no test half)",
            "results": results}
