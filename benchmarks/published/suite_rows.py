"""The published suite's CSV contract (``rows.csv``; the columns are described in ``run.py``'s
docstring and README.md here): reading the rows, a row's ``overrides``, whether its setting keeps
any expert off the GPU, the checks that refuse a bad row in one line naming it, and a row's
published figure as a time."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("id", "source", "engine", "engine_conf", "model", "dtype", "hardware", "gpus", "tp",
           "moe_parallel", "batch", "input_len", "output_len", "num_prompts", "token_budget",
           "metric", "measured", "expert_budget", "cache_policy", "cache_scope", "offloaded",
           "suite", "group", "excluded", "overrides", "note")
METRICS = ("batch_latency_s", "tpot_s", "ttft_s", "e2e_s", "out_tok_s_per_gpu", "decode_tok_s")
#: what rows of one group share (besides the ``host=`` override): all but the policy
GROUP_SHARED = ("model", "hardware", "gpus", "tp", "batch", "input_len", "output_len",
                "num_prompts", "metric")
MAX_EXCLUDED_SHARE = 0.10
BAND, RR_BAND = (0.67, 1.5), (0.85, 1.18)


class SuiteError(ValueError):
    """A row breaks the CSV contract (the message names the row)."""


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def parse_overrides(row: dict[str, str]) -> dict[str, str]:
    """The row's ``key=value`` overrides, in order; a token without ``=`` is an error."""
    out: dict[str, str] = {}
    for tok in row.get("overrides", "").split():
        key, eq, value = tok.partition("=")
        if not eq or not key or not value:
            raise SuiteError(f"row {row['id']}: override {tok!r} is not key=value")
        if key in out:
            raise SuiteError(f"row {row['id']}: override {key!r} given twice")
        out[key] = value
    return out


def setting_offloaded(row: dict[str, str]) -> bool:
    """Whether the row's setting keeps any expert off the GPU or computes it elsewhere: an
    ``expert_budget`` of ``fill`` or a fraction < 1, a budget in bytes or a fraction < 1 among
    the overrides, a per-layer cache of k experts, layer streaming, or CPU experts."""
    budget = row.get("expert_budget", "").strip()
    if budget == "fill" or (budget and float(budget) < 1.0):
        return True
    o = parse_overrides(row)
    return (int(o.get("cluster.experts_per_layer", "0")) > 0
            or float(o.get("cluster.expert_budget_fraction", "1")) < 1.0
            or int(o.get("cluster.expert_budget_bytes", "0")) > 0
            or o.get("offload.layer_streaming", "false").lower() == "true"
            or o.get("offload.expert_exec", "copy") in ("cpu", "auto"))


def group_key(row: dict[str, str]) -> tuple[str, ...]:
    """What every row of a group shares with its baseline."""
    return tuple(row[c] for c in GROUP_SHARED) + (parse_overrides(row).get("host", ""),)


def check_rows(rows: list[dict[str, str]]) -> None:
    """The CSV contract; raises SuiteError naming the first row that breaks it."""
    seen: set[str] = set()
    baselines: dict[str, dict[str, str]] = {}
    for row in rows:
        try:
            _check_row(row, seen, baselines)
        except (TypeError, ValueError) as e:
            if isinstance(e, SuiteError):
                raise
            raise SuiteError(f"row {row.get('id') or '?'}: {e}") from None
    off = [r for r in rows if r["offloaded"] == "yes"]
    n_ex = sum(1 for r in off if r["excluded"])
    if n_ex > MAX_EXCLUDED_SHARE * len(off):
        raise SuiteError(f"{n_ex} of {len(off)} offloaded rows excluded: more than "
                         f"{MAX_EXCLUDED_SHARE:.0%}")


def _check_row(row: dict[str, str], seen: set[str], baselines: dict[str, dict[str, str]]) -> None:
    """One row's part of the contract (ids seen and group baselines carried between rows)."""
    rid = row.get("id") or "?"
    missing = [c for c in COLUMNS if row.get(c) is None]
    if missing:
        raise SuiteError(f"row {rid}: missing columns {missing}")
    if rid in seen:
        raise SuiteError(f"row {rid}: id given twice")
    seen.add(rid)
    if row["metric"] not in METRICS:
        raise SuiteError(f"row {rid}: unknown metric {row['metric']!r} (known: {METRICS})")
    if not float(row["measured"]) > 0:
        raise SuiteError(f"row {rid}: measured must be > 0")
    if row["offloaded"] not in ("yes", "no"):
        raise SuiteError(f"row {rid}: offloaded must be yes or no, not {row['offloaded']!r}")
    if row["suite"] not in ("serving", "offload"):
        raise SuiteError(f"row {rid}: suite must be serving or offload")
    if (row["offloaded"] == "yes") != setting_offloaded(row):
        raise SuiteError(f"row {rid}: offloaded={row['offloaded']} disagrees with its setting "
                         f"(expert_budget={row['expert_budget']!r}, "
                         f"overrides={row['overrides']!r})")
    if row["excluded"] and row["offloaded"] != "yes":
        raise SuiteError(f"row {rid}: only offloaded rows may be excluded")
    g = row["group"]
    if g:
        base = baselines.setdefault(g, row)
        if group_key(row) != group_key(base):
            raise SuiteError(f"row {rid}: group {g} shares model, hardware, host and workload "
                             f"with its baseline {base['id']}; this row differs")
        if base["excluded"] and not row["excluded"]:
            raise SuiteError(f"row {rid}: group {g}'s baseline {base['id']} is excluded, so is "
                             f"the group")


def published_s(row: dict[str, str]) -> float:
    """The published figure as a time (seconds), comparable with moesim's."""
    meas = float(row["measured"])
    if row["metric"] == "out_tok_s_per_gpu":
        return int(row["batch"]) * int(row["output_len"]) / (meas * int(row["gpus"]))
    if row["metric"] == "decode_tok_s":
        return 1.0 / meas
    return meas
