"""``moesim experiment prefetch``: the learned predictor as a next-layer prefetcher with real
lead time, against demand LRU, the noisy oracle at the learned predictor's accuracy, and perfect
prefetch, at each memory of ``cluster.expert_budget_fractions``.

    moesim experiment prefetch trace.path=ds.parquet dial.checkpoint=RUN/checkpoint [key=value ...]

The prompts are the checkpoint's held-out test prompts (``dial.split``; then the first
``replay_requests``). In the simulator (LRU over the GPU's expert memory), a next-layer
prefetcher starts its copies on the host link when layer l's routing is known (its gate time)
and layer l+1 waits for those still in flight: copies that arrive late count as stall. The
learned prefetcher (``learned_next``) pays its own compute on every layer (``dial.call_s_per_token``,
or the measured scoring time). Runs per memory: ``lru`` (demand loading, no prefetch),
``learned_next``, ``learned_free`` (the same predictions at zero compute cost: what the cost
takes away), ``noisy_oracle`` at the recall / precision the learned prefetcher measured in that
run (per batch union, the sets it prefetched), ``perfect``. The learned prefetcher's share of
perfect prefetch's stall reduction is (stall_lru - stall_learned) / (stall_lru - stall_perfect).

Writes ``DIR/prefetch.csv``, ``DIR/prefetch.png``, ``DIR/summary.md`` and ``DIR/results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.app.experiments.base import say, write_json
from sim.common.errors import ConfigError

SERIES = ("lru", "learned_next", "learned_gated", "learned_topk", "learned_free", "noisy_oracle",
          "perfect")
GATE = 0.8  # learned_gated's least probability prefetched


def task(cfg_node: Any) -> dict[str, Any]:
    from sim.app.experiments.config import PrefetchExperimentConfig
    from sim.app.experiments.dial import (
        SimSetup,
        check_dial,
        learned_keys,
        load_trace,
        noisy_keys,
        sim_row,
        write_csv,
    )
    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config
    from sim.policies.prefetch.learned_next import break_even

    cfg = app_config(cfg_node, PrefetchExperimentConfig)
    check_dial(cfg)
    if not cfg.dial.checkpoint:
        raise ConfigError("dial.checkpoint is required: a per-token predictor from 'moesim "
                          "predictor train trace.path=FILE' (its checkpoint/)")
    out = Path(run_dir())
    trace, tpath = load_trace(cfg, out)
    fracs = [float(f) for f in cfg.cluster.expert_budget_fractions]
    say(f"moesim experiment prefetch: {cfg.trace.path}, {trace.num_tokens} tokens, "
        f"{len(trace.request_ids())} prompts; memories {fracs}")
    setup = SimSetup(cfg, trace, tpath)
    calib = _calibration(cfg, trace, tpath)
    D = int(cfg.dial.lead)
    leads = sorted(set(int(d) for d in cfg.dial.leads))
    rows: list[dict[str, Any]] = []
    lead_rows: list[dict[str, Any]] = []
    for f in fracs:
        mem = {"cluster.expert_budget_fraction": f, "policy.cache": "lru"}
        say(f"[{f:g}] {', '.join(SERIES)} (lead {D}); leads {leads} ...")
        got: dict[str, dict[str, Any]] = {}
        m, _ = setup.run(f"lru@{f:g}", {**mem, "policy.prefetch": "none"})
        got["lru"] = {**sim_row(m), "recall": None, "precision": None}
        by_lead: dict[int, tuple[dict[str, Any], Any, dict[str, Any]]] = {}
        for d in sorted(set(leads) | {D}):
            m, pol = setup.run(f"learned_next lead {d}@{f:g}",
                               {**mem, **learned_keys(cfg, tpath, lead=d)})
            mp, _ = setup.run(f"perfect lead {d}@{f:g}", {**mem, **_perfect(d)})
            by_lead[d] = (sim_row(m), pol, sim_row(mp))
        row, pol, prow = by_lead[D]
        acc = pol.accuracy()
        be = break_even(pol.copy_s, pol.window_s, pol.victim)
        got["learned_next"] = {**row, **acc, "call_s_per_token_layer": pol.s_per_token_layer,
                               "measured_s_per_token": pol.measured_s_per_token,
                               "copy_s": pol.copy_s, "window_s": pol.window_s,
                               "victim_value": pol.victim,
                               "break_even_precision": be}
        m, p2 = setup.run(f"learned_gated@{f:g}",
                          {**mem, **learned_keys(cfg, tpath, rule="gate", gate=GATE)})
        got["learned_gated"] = {**sim_row(m), **p2.accuracy()}
        m, p3 = setup.run(f"learned_topk@{f:g}",
                          {**mem, **learned_keys(cfg, tpath, name="learned_topk")})
        got["learned_topk"] = {**sim_row(m), **p3.accuracy()}
        m, _ = setup.run(f"learned_free@{f:g}",
                         {**mem, **learned_keys(cfg, tpath, free=True, lead=D, probe=0)})
        got["learned_free"] = {**sim_row(m), **acc}
        m, _ = setup.run(f"noisy_oracle@{f:g}",
                         {**mem, **noisy_keys(cfg, acc["recall"], max(acc["precision"], 1e-3))})
        got["noisy_oracle"] = {**sim_row(m), **acc}
        got["perfect"] = {**prow, "recall": 1.0, "precision": 1.0}
        base = got["lru"]["stall_s"]
        for s in SERIES:
            rows.append({"budget": f, "series": s, "lead": D if s in ("learned_next", "learned_free",
                                                                      "perfect") else 1,
                         **got[s], "share_of_perfect_stall_reduction":
                         _share(base, got[s]["stall_s"], prow["stall_s"])})
        for d in leads:
            row, pol, prow = by_lead[d]
            per_k = {f"{x}_d{a['lead']}": a[x] for a in pol.accuracy_by_lead()
                     for x in ("recall", "precision")}
            lead_rows.append({"budget": f, "lead": d, "stall_lru_s": base,
                              "stall_learned_s": row["stall_s"], "stall_perfect_s": prow["stall_s"],
                              "hidden_learned_s": base - row["stall_s"],
                              "hidden_perfect_s": base - prow["stall_s"],
                              "share_of_perfect_stall_reduction":
                              _share(base, row["stall_s"], prow["stall_s"]),
                              "e2e_p50_learned_s": row["e2e_p50_s"],
                              "e2e_p50_lru_s": got["lru"]["e2e_p50_s"],
                              "h2d_learned_gb": row["h2d_gb"], **per_k})
    write_csv(lead_rows, out / "lead.csv")
    write_csv(rows, out / "prefetch.csv")
    write_json({"kind": "experiment_prefetch", "trace": cfg.trace.path,
                "prompts": len(trace.request_ids()), "tokens": trace.num_tokens,
                "checkpoint": cfg.dial.checkpoint, "hardware": cfg.hardware.name, "rows": rows,
                "calibration": calib, "lead": D, "leads": lead_rows},
               out / "results.json")
    _plot(rows, lead_rows, fracs, out / "prefetch.png")
    _summary(rows, lead_rows, fracs, cfg, trace, calib, out / "summary.md")
    print(f"prefetch: {out / 'prefetch.csv'}, {out / 'prefetch.png'}, {out / 'summary.md'}")
    return {"rows": rows}


def _perfect(lead: int) -> dict[str, Any]:
    return {"policy.prefetch": "perfect", "policy.prefetch_args": {"lead": int(lead)}}


def _share(base: float, stall: float, best: float) -> float | None:
    """(base - stall) / (base - best): the share of perfect's stall reduction (None: perfect
    reduces none)."""
    return (base - stall) / (base - best) if base > best else None


def _calibration(cfg: Any, trace: Any, tpath: str) -> list[dict[str, float]]:
    """Reliability of the predictor's next-layer probabilities on the replayed prompts."""
    from sim.predictor.table import calibration, next_layer_probs
    from traces.format import read_trace

    probs = next_layer_probs(cfg.dial.checkpoint, read_trace(tpath))
    return calibration(probs.prob, trace.experts)


def _plot(rows: list[dict[str, Any]], lead_rows: list[dict[str, Any]], fracs: list[float],
          path: Path) -> None:
    import numpy as np

    from analysis.plots import pyplot, save_figure

    plt = pyplot()
    keys = (("stall_s", "fetch stall (s)"), ("h2d_gb", "H2D bytes (GB)"), ("hit_rate", "hit rate"))
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.2))
    x = np.arange(len(fracs))
    w = 0.8 / len(SERIES)
    for ax, (key, label) in zip(axes, keys):
        for i, s in enumerate(SERIES):
            ys = [next((r[key] for r in rows if r["budget"] == f and r["series"] == s), 0.0)
                  for f in fracs]
            ax.bar(x + (i - (len(SERIES) - 1) / 2) * w, ys, w, label=s)
        ax.set_xticks(x, [f"{f:g}" for f in fracs])
        ax.set_xlabel("share of the experts on the GPU")
        ax.set_ylabel(label)
        if key == "hit_rate":
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    for i, f in enumerate(fracs):  # the precision at which prefetch starts to pay
        r = next((r for r in rows if r["budget"] == f and r["series"] == "learned_next"), None)
        if r is not None:
            axes[0].annotate(f"break-even\np={r['break_even_precision']:.2f}", (x[i], 0),
                             xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6)
    ax = axes[-1]  # stall hidden per lead time, learned (solid) and perfect (dashed)
    for i, f in enumerate(fracs):
        mine = [r for r in lead_rows if r["budget"] == f]
        ds = [r["lead"] for r in mine]
        ax.plot(ds, [r["hidden_learned_s"] for r in mine], "o-", color=f"C{i}", label=f"learned {f:g}")
        ax.plot(ds, [r["hidden_perfect_s"] for r in mine], "s--", color=f"C{i}", label=f"perfect {f:g}")
    ax.set_xlabel("lead d (layers ahead)")
    ax.set_ylabel("stall hidden vs LRU (s)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def _summary(rows: list[dict[str, Any]], lead_rows: list[dict[str, Any]], fracs: list[float],
             cfg: Any, trace: Any, calib: list[dict[str, float]], path: Path) -> None:
    from analysis.plots import command_line
    from sim.common.files import atomic_write_bytes

    lr = next(r for r in rows if r["series"] == "learned_next")
    lines = ["# Next-layer prefetch with real lead time", "", f"`{command_line()}`", "",
             f"Trace {cfg.trace.path}"
             f"{f' (the checkpoint split {cfg.dial.split!r})' if cfg.dial.checkpoint else ''}"
             f": {len(trace.request_ids())} prompts, {trace.num_tokens} "
             f"tokens; model {cfg.model.name}, hardware {cfg.hardware.name} (host link "
             f"{cfg.hardware.host_link_bytes_per_s / 1e9:g} GB/s); predictor {cfg.dial.checkpoint}, "
             f"charged {lr['call_s_per_token_layer'] * 1e6:.2f} us per token per layer "
             f"(measured scoring {lr['measured_s_per_token'] * 1e6:.1f} us per token, all layers).",
             "", "| memory | series | recall | precision | hit rate | stall (s) | H2D (GB) | "
             "E2E p50 (s) | share of perfect's stall reduction |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "" if r["recall"] is None else f"{r['recall']:.3f}"
        pre = "" if r["precision"] is None else f"{r['precision']:.3f}"
        sh = r["share_of_perfect_stall_reduction"]
        lines.append(f"| {r['budget']:g} | {r['series']} | {rec} | {pre} | {r['hit_rate']:.3f} | "
                     f"{r['stall_s']:.3f} | {r['h2d_gb']:.2f} | {r['e2e_p50_s']:.3f} | "
                     f"{'n/a' if sh is None else f'{sh:.2f}'} |")
    lines += [""]
    for f in fracs:
        r = next(x for x in rows if x["budget"] == f and x["series"] == "learned_next")
        sh = r["share_of_perfect_stall_reduction"]
        lines.append(f"- {f:g} of the experts: the learned prefetcher (lead {r['lead']}) achieves "
                     f"{'n/a (perfect reduces no stall)' if sh is None else f'{sh * 100:.0f} %'} "
                     f"of perfect prefetch's stall reduction at the same lead; a copy takes "
                     f"{r['copy_s'] * 1e3:.3f} ms, the link is free for prefetches "
                     f"{r['window_s'] * 1e3:.3f} ms per layer, a wrong copy's victim costs "
                     f"{r['victim_value']:.2f} copies: prefetch pays above precision "
                     f"{r['break_even_precision']:.3f} (break-even).")
    lines += ["", "Lead time: `learned_next` weighing layers l+1 .. l+d, `perfect` loading layer l+d "
              "(stall hidden = LRU's stall - the series'; recall / precision of the sets chosen "
              "per distance k):", "", "| memory | d | hidden learned (s) | hidden perfect (s) | "
              "share | E2E p50 learned / LRU (s) | recall / precision per k |",
              "|---|---|---|---|---|---|---|"]
    for r in lead_rows:
        sh = r["share_of_perfect_stall_reduction"]
        per = ", ".join(f"k={k}: {r[f'recall_d{k}']:.3f} / {r[f'precision_d{k}']:.3f}"
                        for k in range(1, r["lead"] + 1))
        lines.append(f"| {r['budget']:g} | {r['lead']} | {r['hidden_learned_s']:.3f} | "
                     f"{r['hidden_perfect_s']:.3f} | {'n/a' if sh is None else f'{sh:.2f}'} | "
                     f"{r['e2e_p50_learned_s']:.3f} / {r['e2e_p50_lru_s']:.3f} | {per} |")
    lines += ["", "Calibration of the predictor's next-layer probabilities on these prompts "
              "(layers 2..L):", "", "| p in | mean p | share true | n |", "|---|---|---|---|"]
    lines += [f"| [{c['lo']:.1f}, {c['lo'] + 0.1:.1f}) | {c['mean_p']:.3f} | {c['true']:.3f} | "
              f"{c['n']} |" for c in calib]
    lines += ["", "![prefetch](prefetch.png)", ""]
    atomic_write_bytes("\n".join(lines).encode(), path)
