"""The cluster plan, computed once from the config before anything runs; every config error of
the simulator is raised here (:func:`check_config` for what the config alone decides,
:meth:`ClusterPlan.build` for what needs the routing pool and the workload).

The plan fixes: the topology (replicas of ``expert_parallel`` GPUs), where each expert lives
(placement policy, planned on the routing pool's load), each GPU's cache slots
(:func:`sim.world.facts.cache_slots`; with one cache per layer, shared out by :func:`layer_shares`),
the expert and KV bytes, and the KV capacity of a replica.

Shape legend: L MoE layers, E experts per layer, K top-k, G GPUs of a replica, N pool tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import CACHE, PLACEMENT, PREFETCH, ROUTER, SCHEDULER, Placement, PlacementPolicy
from sim.world.config import ClusterConfig, SimConfig
from sim.world.facts import cache_slots
from sim.world.model import dense_weight_bytes, expert_bytes, kv_bytes_per_token, layer_weight_bytes
from sim.world.offload_config import check_host_memory, check_offload
from sim.world.ranges import check_ranges
from sim.world.topology import Topology
from sim.world.traffic import pool_duplicates
from traces.format import expert_counts


def _positive(key: str, value: float) -> None:
    if not (value > 0) or math.isnan(value):
        raise ConfigError(f"{key}={value}; expected a positive number")


def _nonneg(key: str, value: float) -> None:
    if not (value >= 0):
        raise ConfigError(f"{key}={value}; expected a number >= 0")


def check_config(cfg: SimConfig) -> Topology:
    """Every check the config alone decides; returns the topology."""
    hw, c, s, m = cfg.hardware, cfg.cluster, cfg.serving, cfg.model
    for key in ("memory_bytes", "hbm_bytes_per_s", "bf16_flops", "host_link_bytes_per_s",
                "nvlink_bytes_per_s", "network_bytes_per_s"):
        _positive(f"hardware.{key}", getattr(hw, key))
    for key in ("flops_efficiency", "hbm_efficiency"):
        v = getattr(hw, key)
        if not 0.0 < v <= 1.0:
            raise ConfigError(f"hardware.{key}={v}; expected a fraction in (0, 1]")
    for key in ("kernel_latency_s", "host_link_latency_s", "nvlink_latency_s", "network_latency_s"):
        _nonneg(f"hardware.{key}", getattr(hw, key))
    for key in ("num_layers", "num_experts", "top_k", "hidden_size", "expert_intermediate_size"):
        if getattr(m, key) < 1:
            raise ConfigError(f"model.{key}={getattr(m, key)}; expected >= 1")
    if m.top_k > m.num_experts:
        raise ConfigError(f"model.top_k={m.top_k} exceeds model.num_experts={m.num_experts}")
    topo = Topology.from_config(c, hw)
    tp = c.tensor_parallel
    if tp < 1 or c.expert_parallel % tp:
        raise ConfigError(f"cluster.tensor_parallel={tp} must be >= 1 and divide "
                          f"cluster.expert_parallel={c.expert_parallel} (the replica's GPUs)")
    if tp > c.gpus_per_node:
        raise ConfigError(f"cluster.tensor_parallel={tp} exceeds a node's {c.gpus_per_node} GPUs "
                          f"(tensor parallelism stays on NVLink)")
    if c.moe_parallel not in ("ep", "tp"):
        raise ConfigError(f"cluster.moe_parallel={c.moe_parallel!r}; expected 'ep' (experts placed "
                          f"whole) or 'tp' (experts sharded over the tensor-parallel group)")
    if c.moe_parallel == "tp" and tp != c.expert_parallel:
        raise ConfigError(f"cluster.moe_parallel=tp shards every expert over the replica: needs "
                          f"cluster.tensor_parallel ({tp}) == cluster.expert_parallel "
                          f"({c.expert_parallel})")
    if c.cache_scope not in ("global", "per_layer"):
        raise ConfigError(f"cluster.cache_scope={c.cache_scope!r}; expected 'global' (one cache "
                          f"per GPU) or 'per_layer' (one cache per MoE layer per GPU)")
    for key in ("host_copy_overhead_s", "iteration_overhead_s"):
        _nonneg(f"hardware.{key}", getattr(hw, key))
    if s.token_budget < 1 or s.max_batch_requests < 1 or s.scheduler_window < 1:
        raise ConfigError("serving.token_budget, serving.max_batch_requests and "
                          "serving.scheduler_window must be >= 1")
    if not 0.0 < c.expert_budget_fraction <= 1.0:
        raise ConfigError(f"cluster.expert_budget_fraction={c.expert_budget_fraction}; expected "
                          f"a fraction in (0, 1] of the experts each GPU holds")
    _nonneg("cluster.expert_budget_bytes", c.expert_budget_bytes)
    _nonneg("cluster.reserved_bytes", c.reserved_bytes)
    if cfg.workload.time_scale <= 0:
        raise ConfigError(f"workload.time_scale={cfg.workload.time_scale}; expected > 0")
    for i, f in enumerate(c.faults):
        where = f"cluster.faults[{i}]"
        if (f.gpu < 0) == (f.node < 0):
            raise ConfigError(f"{where}: give exactly one of gpu or node (the other -1), got "
                              f"gpu={f.gpu}, node={f.node}")
        if f.gpu >= topo.num_gpus or f.node >= topo.nodes:
            raise ConfigError(f"{where}: gpu {f.gpu} / node {f.node} is not in the cluster "
                              f"({topo.nodes} node(s) x {topo.gpus_per_node} GPUs)")
        if not (f.time_s >= 0) or math.isinf(f.time_s):
            raise ConfigError(f"{where}.time_s={f.time_s}; expected a finite time >= 0")
        if not (f.recovery_s >= 0):
            raise ConfigError(f"{where}.recovery_s={f.recovery_s}; expected >= 0 (inf: never)")
    check_ranges(cfg)
    check_offload(cfg.offload, cfg.host, cfg.policy.cache)
    if cfg.offload.expert_exec != "copy" and (c.moe_parallel == "tp" or
                                               cfg.policy.placement in ("split", "eplb", "rebalance")):
        raise ConfigError(f"offload.expert_exec={cfg.offload.expert_exec} runs each missed expert "
                          f"on one host: it needs every expert on one GPU (cluster.moe_parallel=ep "
                          f"and a placement without replicas, not {cfg.policy.placement!r})")
    if c.experts_per_layer and c.expert_budget_bytes:
        raise ConfigError(f"cluster.experts_per_layer={c.experts_per_layer} sets the cache; "
                          f"cluster.expert_budget_bytes={c.expert_budget_bytes} would too: give one")
    _check_expert_memory(cfg, topo)
    pol = cfg.policy
    # every policy's arguments, checked now: a cache is only built where a GPU caches
    CACHE.config(pol.cache, **pol.cache_args)
    PREFETCH.config(pol.prefetch, **pol.prefetch_args)
    PLACEMENT.config(pol.placement, **pol.placement_args)
    SCHEDULER.config(pol.scheduler, **pol.scheduler_args)
    ROUTER.get(s.router)
    if CACHE.get(pol.cache).requires_future:
        raise ConfigError(f"policy.cache={pol.cache!r} is an oracle (needs the future); use the "
                          f"replay (moesim cache) for oracles")
    pf_cls = PREFETCH.get(pol.prefetch)
    if pf_cls.requires_future and not pf_cls.batch_rows:
        raise ConfigError(f"policy.prefetch={pol.prefetch!r} is an oracle (needs the future); "
                          f"the simulator runs online policies and the next-layer oracles only")
    return topo


def layer_shares(slots: int, experts: list[int]) -> list[int]:
    """A GPU's ``slots`` (the same budget as one cache over all its layers) shared out over its
    layers, ``experts[l]`` the experts it holds at layer l (``cluster.cache_scope=per_layer``).

    The rule (largest remainder, Hamilton's): layer l's quota is ``slots x experts[l] / total``;
    each layer gets the quota's floor, and the slots left over go one each to the layers with
    the largest remainders, the lower layer first on a tie. The shares add up to ``slots``
    exactly (a budget is never moved to the KV cache) and none exceeds its layer's experts.
    Mixtral on 8 GPUs (one expert per layer per GPU, 32 layers) at half the experts: 16 slots,
    every quota 0.5: layers 0-15 get one slot each, layers 16-31 none."""
    total = sum(experts)
    if not total:
        return [0] * len(experts)
    floors = [slots * n // total for n in experts]
    rest = slots - sum(floors)
    order = sorted(range(len(experts)), key=lambda l: (-(slots * experts[l] % total), l))
    for l in order[:rest]:
        floors[l] += 1
    return floors


def gpu_slots(c: ClusterConfig, home: int, eb: int, per_layer: list[int] | None = None) -> int:
    """A GPU's expert cache slots: ``cluster.experts_per_layer`` (if > 0) experts of each layer
    (at most the ``per_layer[l]`` it holds there), else ``cluster.expert_budget_bytes`` (if > 0)
    over an expert's bytes ``eb``, else ``cluster.expert_budget_fraction`` of the ``home``
    experts it holds (:func:`sim.world.facts.cache_slots`); never more than ``home``."""
    if c.experts_per_layer > 0 and per_layer is not None:
        return sum(min(c.experts_per_layer, n) for n in per_layer)
    if c.expert_budget_bytes > 0:
        return min(home, int(c.expert_budget_bytes // eb))
    return cache_slots(c.expert_budget_fraction, home, "cluster.expert_budget_fraction")


def _budget_key(c: ClusterConfig) -> str:
    """The key that sets the cache's size in ``c`` (for a message)."""
    return "cluster.experts_per_layer" if c.experts_per_layer else \
        "cluster.expert_budget_bytes" if c.expert_budget_bytes else "cluster.expert_budget_fraction"


def _check_expert_memory(cfg: SimConfig, topo: Topology) -> None:
    """Before the routing pool is built: the budget gives every GPU's cache at least one slot,
    and the fewest experts a GPU holds (``L * (E // ep)`` under any placement without
    redundancy; ``L * E`` shards when experts are sharded) fit its memory. The exact check per
    GPU is :meth:`ClusterPlan.build`'s, on the placement the policy makes."""
    m, c, hw = cfg.model, cfg.cluster, cfg.hardware
    ep = topo.expert_parallel
    moe_tp = c.moe_parallel == "tp"
    L, E = m.num_layers, m.num_experts
    per_layer = E if moe_tp else E // ep
    home = L * per_layer
    if home == 0:
        return  # a GPU without experts: nothing to cache
    eb = expert_bytes(m) // (ep if moe_tp else 1)
    cap = gpu_slots(c, home, eb, [per_layer] * L)
    # (with cluster.cache_scope=per_layer the GPU's slots are shared out over its layers by
    # layer_shares: the same total, so the same check)
    if cap == 0 and c.expert_budget_bytes > 0:
        raise ConfigError(f"cluster.expert_budget_bytes={c.expert_budget_bytes} holds no expert "
                          f"of {eb} bytes ({m.name}); expected >= {eb} (one slot), or 0 to "
                          f"use cluster.expert_budget_fraction")
    if cap == 0:
        raise ConfigError(f"cluster.expert_budget_fraction={c.expert_budget_fraction} gives each GPU's "
                          f"cache 0 of its {home} experts; expected a fraction in [1/{home} = "
                          f"{1 / home:.6g}, 1] (at least one slot)")
    dense_share = dense_weight_bytes(m) / ep
    check_host_memory(cfg.host, max(0, L * E * expert_bytes(m) - ep * cap * eb),
                      dense_weight_bytes(m) if cfg.offload.layer_streaming else 0.0)
    if hw.memory_bytes - c.reserved_bytes - dense_share - cap * eb <= 0:
        raise ConfigError(
            f"cluster: a GPU of {hw.name} ({hw.memory_bytes / 1e9:.0f} GB) cannot hold {cap} experts "
            f"({cap * eb / 1e9:.1f} GB) + dense weights ({dense_share / 1e9:.1f} GB) + "
            f"cluster.reserved_bytes ({c.reserved_bytes / 1e9:.1f} GB); lower "
            f"{_budget_key(c)} or add GPUs")


@dataclass
class ClusterPlan:
    """What the config and the routing pool fix before the first event (see the module doc)."""

    topo: Topology
    L: int
    E: int
    K: int
    hidden_size: int
    expert_bytes: int
    kv_token_bytes: float
    placement: Placement
    share: np.ndarray  # (L, E, G) share of an expert's tokens each GPU of a replica computes
    single_owner: bool  # every expert on exactly one GPU
    pair_key: np.ndarray  # (P,) key of each (key, GPU) holding, key-sorted
    pair_gpu: np.ndarray  # (P,)
    lg_index: np.ndarray  # (L*E,) flat (layer, owner GPU) index of each key
    home_n: np.ndarray  # (L, G) experts each GPU holds per layer
    home_masks: list[np.ndarray]  # per local GPU: (L*E,) bool
    capacity_slots: list[int]  # per local GPU
    layer_slots: list[list[int]]  # per local GPU, per layer (cache_scope=per_layer: layer_shares; else [])
    kv_capacity_tokens: int
    pool_keys: np.ndarray  # (N, L*K) the pool's routing as cache keys layer * E + expert
    tensor_parallel: int = 1
    moe_tp: bool = False  # every expert sharded over the replica (expert_bytes is one shard)
    #: (N, L*K) per pool token and (layer, k): ``layer * G + GPU`` where the k-th expert's GPU
    #: already receives the token from an earlier expert of the same layer (the all-to-all sends
    #: a token once per destination GPU: sim/world/network.py), else ``L * G``; None where no
    #: token of the pool has two experts of a layer on one GPU (or there is no all-to-all)
    pool_dups: np.ndarray | None = None
    #: their prefix counts (sim/serving/token_counts.py builds them when first needed)
    dup_prefix: np.ndarray | None = None
    #: replicas of COMPILED_MIN_GPUS GPUs and more: what the compiled count of a batch's rows
    #: reads of the pool (sim/world/traffic.py pool_tables builds it when first needed)
    pool_blocks: tuple | None = None
    #: offload.layer_streaming: (L,) bytes each GPU copies before each layer at every iteration
    #: (0.0 for the first layers, resident in the budget); empty otherwise
    stream_bytes: list[float] | None = None

    @classmethod
    def build(cls, cfg: SimConfig, topo: Topology, pool_experts: np.ndarray, prompt: np.ndarray,
              output: np.ndarray, request_ids: list[str], placement_policy: PlacementPolicy
              ) -> ClusterPlan:
        """``topo`` from :func:`check_config`; the pool's routing (N, L, K); the requests' prompt
        and output tokens (R,) and ids."""
        m, c, hw = cfg.model, cfg.cluster, cfg.hardware
        L, E, K = m.num_layers, m.num_experts, m.top_k
        if pool_experts.ndim != 3 or pool_experts.shape[1:] != (L, K):
            raise ConfigError(f"routing pool has shape {pool_experts.shape[1:]} per token; model "
                              f"{m.name!r} expects ({L} layers, top-{K})")
        ep = topo.expert_parallel
        key_dtype = np.int16 if L * E < 2**15 else np.int32
        layer_base = (np.arange(L, dtype=np.int64) * E)[None, :, None]  # (1, L, 1)
        pool_keys = (pool_experts.astype(key_dtype) + layer_base.astype(key_dtype)).reshape(
            len(pool_experts), -1)  # (N, L*K)
        load = expert_counts(pool_experts, E)  # (L, E) the history the operator has
        placement = placement_policy.place(load)
        if placement.num_gpus != ep:
            raise ConfigError(f"placement policy {cfg.policy.placement!r} placed experts on "
                              f"{placement.num_gpus} GPUs, the replica has {ep}")
        moe_tp = c.moe_parallel == "tp"
        if moe_tp:  # every GPU holds a 1/ep shard of every expert
            share = np.full((L, E, ep), 1.0 / ep)
        else:
            share = placement.share(L, E, cfg.policy.placement)  # (L, E, G)
        pairs = np.argwhere(share.reshape(L * E, ep) > 0)  # (P, 2) (key, gpu), key-sorted
        owner = share.reshape(L * E, ep).argmax(axis=1)  # (L*E,)
        lg_index = (np.arange(L * E) // E) * ep + owner
        home_n = np.bincount(lg_index, minlength=L * ep).reshape(L, ep)
        eb = expert_bytes(m) // (ep if moe_tp else 1)
        kv_tb = kv_bytes_per_token(m)
        dense_share = dense_weight_bytes(m) / ep
        masks, slots, budgets, layer_slots, kv_bytes_total = [], [], [], [], 0.0
        for g in range(ep):
            mask = (share[:, :, g] > 0).ravel()  # (L*E,)
            home = int(mask.sum())
            per_layer = mask.reshape(L, E).sum(axis=1).tolist()
            cap = gpu_slots(c, home, eb, per_layer)
            if c.experts_per_layer > 0:  # k of each layer's experts (mixtral-offloading)
                layer_slots.append([min(c.experts_per_layer, n) for n in per_layer])
            elif c.cache_scope == "per_layer":  # the GPU's slots shared out over its layers
                layer_slots.append(layer_shares(cap, per_layer))
            free = hw.memory_bytes - c.reserved_bytes - dense_share - cap * eb
            if free <= 0:
                raise ConfigError(
                    f"cluster: GPU {g} of {hw.name} ({hw.memory_bytes / 1e9:.0f} GB) cannot hold "
                    f"{cap} experts ({cap * eb / 1e9:.1f} GB) + dense weights "
                    f"({dense_share / 1e9:.1f} GB) + reserve; lower {_budget_key(c)} or add GPUs")
            kv_bytes_total += free
            masks.append(mask)
            slots.append(home if cfg.offload.layer_streaming else cap)
            budgets.append(cap)
        kv_cap = int(kv_bytes_total // kv_tb)
        if kv_cap < 1:
            raise ConfigError("cluster: no memory left for the KV cache")
        need_kv = prompt + output  # (R,) KV tokens a request holds at its end
        if len(need_kv) and int(need_kv.max()) > kv_cap:
            i = int(np.argmax(need_kv))
            raise ConfigError(
                f"request {request_ids[i]!r} needs {int(need_kv[i])} KV tokens (prompt + output), "
                f"a replica holds {kv_cap} ({hw.name}, {ep} GPU(s), expert budget); lower "
                f"cluster.expert_budget_fraction, add GPUs, or cap workload.max_requests")
        stream = None
        if cfg.offload.layer_streaming:  # whole layers: the first that fit stay, the rest stream
            resident = min(budgets) // max(1, int(home_n.max()))
            stream = [0.0] * resident + [layer_weight_bytes(m) / ep] * (L - resident)
        pool_dups = None
        if len(pairs) == L * E and not moe_tp and ep // c.tensor_parallel > 1 and K > 1:
            pool_dups = pool_duplicates(pool_keys, lg_index, L, K, ep)
        return cls(topo=topo, L=L, E=E, K=K, hidden_size=m.hidden_size, expert_bytes=eb, kv_token_bytes=kv_tb,
                   placement=placement, share=share, single_owner=len(pairs) == L * E,
                   pair_key=pairs[:, 0].astype(np.int64), pair_gpu=pairs[:, 1].astype(np.int64),
                   lg_index=lg_index, home_n=home_n, home_masks=masks, capacity_slots=slots,
                   layer_slots=layer_slots, kv_capacity_tokens=kv_cap, pool_keys=pool_keys,
                   tensor_parallel=c.tensor_parallel, moe_tp=moe_tp, pool_dups=pool_dups,
                   stream_bytes=stream)

