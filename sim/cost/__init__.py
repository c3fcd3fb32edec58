"""Cost models: the protocol (:mod:`sim.cost.base`), the analytic roofline and the table model."""

from __future__ import annotations

from sim.config import HardwareConfig, ModelConfig
from sim.cost.analytic import AnalyticCost
from sim.cost.base import CostModel
from sim.errors import ConfigError


def make_cost_model(kind: str, model: ModelConfig, hw: HardwareConfig, table: str = "") -> CostModel:
    analytic = AnalyticCost(model, hw)
    if kind == "analytic":
        return analytic
    if kind == "table":
        from sim.cost.table import TableCost

        if not table:
            raise ConfigError("serving.cost_model=table needs serving.cost_table=PATH (a CSV)")
        return TableCost.from_csv(table, analytic)
    raise ConfigError(f"unknown cost model {kind!r}; expected 'analytic' or 'table'")


__all__ = ["AnalyticCost", "CostModel", "make_cost_model"]
