"""Cost models: the protocol (:mod:`sim.cost.base`), the analytic roofline and the table model;
:func:`make_cost_model` picks one by name. The seam to realrun's calibration: the table model
reads the profiles realrun writes. Imports ``traces``, ``sim.world`` and ``sim.common`` only."""

from __future__ import annotations

from sim.common.errors import ConfigError
from sim.cost.analytic import AnalyticCost, Parallel
from sim.cost.base import CostModel
from sim.world.config import ClusterConfig, EngineConfig, HardwareConfig, ModelConfig
from sim.world.offload_config import HostConfig, OffloadConfig


def parallel_of(cluster: ClusterConfig) -> Parallel:
    """The parallel layout of one replica of ``cluster``."""
    return Parallel(gpus=cluster.expert_parallel, tp=cluster.tensor_parallel,
                    moe_tp=cluster.moe_parallel == "tp",
                    inter_node=cluster.expert_parallel > cluster.gpus_per_node)


def make_cost_model(kind: str, model: ModelConfig, hw: HardwareConfig, table: str = "",
                    cluster: ClusterConfig | None = None,
                    engine: EngineConfig | None = None, host: HostConfig | None = None,
                    offload: OffloadConfig | None = None) -> CostModel:
    """The cost model ``kind`` for ``model`` on ``hw``, priced for one replica of ``cluster``
    (default: one GPU) served by ``engine`` (default: no engine overhead), on ``host`` with
    ``offload``'s host memory (default: no host: the GPU's own link)."""
    eng = engine or EngineConfig()
    if not eng.iteration_overhead_s >= 0:
        raise ConfigError(f"engine.iteration_overhead_s={eng.iteration_overhead_s} (engine "
                          f"{eng.name!r}); expected a number >= 0")
    analytic = AnalyticCost(model, hw, parallel_of(cluster) if cluster is not None else None,
                            engine_overhead_s=eng.iteration_overhead_s, host=host, offload=offload,
                            layer_overhead_s=eng.layer_overhead_s)
    if kind == "analytic":
        return analytic
    if kind == "table":
        from sim.cost.table import TableCost

        if not table:
            raise ConfigError("serving.cost_model=table needs serving.cost_table=PATH (a CSV)")
        return TableCost.from_csv(table, analytic)
    raise ConfigError(f"unknown cost model {kind!r}; expected 'analytic' or 'table'")


__all__ = ["AnalyticCost", "CostModel", "Parallel", "make_cost_model", "parallel_of"]
