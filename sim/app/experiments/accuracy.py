"""``moesim experiment accuracy``: the accuracy dial. What next-layer prediction accuracy buys
what hit rate, stall time and bytes moved at a memory budget, before anyone builds a predictor.

    moesim experiment accuracy trace.path=ds.parquet [dial.checkpoint=RUN/checkpoint] [key=value ...]

``noisy_oracle`` (the true next-layer experts corrupted to a recall and a precision, seeded;
``perfect`` at 1.0) is swept over ``dial.recalls`` x ``dial.precisions`` at each of
``cluster.expert_budget_fractions``, in the cache replay (token by token, one LRU cache per
layer: hit rate, bytes) and in the simulator (the trace's own prompts, LRU over the GPU's expert
memory, copies over the host link started at the previous layer's gate: hit rate, stall, bytes),
against demand LRU without prefetch. With ``dial.checkpoint`` the learned next-layer prefetcher
(``learned_topk``, labelled learned_next) runs too and is marked on the curves at its measured
recall and precision
(per token in the replay, per batch union in the simulator), on the checkpoint's held-out test
prompts (``dial.split``). In the simulator a prefetched
expert counts as a hit even when its copy is still in flight; the stall is what a late copy costs.

Writes ``DIR/accuracy.csv`` (one row per driver, memory and setting), ``DIR/accuracy.png``,
``DIR/summary.md`` and ``DIR/results.json``. Types: :class:`sim.app.experiments.config.DialConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.app.experiments.base import say, write_json


def task(cfg_node: Any) -> dict[str, Any]:
    from sim.app.experiments.config import AccuracyExperimentConfig
    from sim.app.experiments.dial import SimSetup, check_dial, learned_keys, load_trace, noisy_keys, write_csv
    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config
    from sim.replay.cache import replay_plain
    from sim.world.facts import expert_bytes_of_trace

    cfg = app_config(cfg_node, AccuracyExperimentConfig)
    check_dial(cfg)
    out = Path(run_dir())
    trace, tpath = load_trace(cfg, out)
    fracs = [float(f) for f in cfg.cluster.expert_budget_fractions]
    grid = [(float(r), float(p)) for r in cfg.dial.recalls for p in cfg.dial.precisions]
    eb = expert_bytes_of_trace(trace.meta, cfg.model, None)
    say(f"moesim experiment accuracy: {cfg.trace.path}, {trace.num_tokens} tokens, "
        f"{len(trace.request_ids())} prompts; {len(grid)} settings x {len(fracs)} memories")
    rows: list[dict[str, Any]] = []
    learned: dict[str, Any] = {}
    if cfg.dial.replay:
        if cfg.dial.checkpoint:  # the per-token accuracy: the same at every memory
            from sim.policies import PREFETCH

            learned_kw = learned_keys(cfg, tpath, name="learned_topk")["policy.prefetch_args"]
            pol = PREFETCH.make("learned_topk", num_layers=trace.num_layers,
                                num_experts=trace.num_experts, top_k=trace.top_k, **learned_kw)
            acc = _token_accuracy(pol, trace)
        for f in fracs:
            say(f"[replay {f:g}] lru, noisy_oracle x {len(grid)} ...")
            rec = replay_plain(trace, "lru", f).record(eb)
            rows.append(_replay_row("lru", f, None, None, rec))
            for r, p in grid:
                kw = noisy_keys(cfg, r, p)["policy.prefetch_args"]
                rec = replay_plain(trace, "lru", f, prefetch="noisy_oracle", prefetch_kwargs=kw).record(eb)
                rows.append(_replay_row("noisy_oracle", f, r, p, rec))
            if cfg.dial.checkpoint:
                res = replay_plain(trace, "lru", f, prefetch="learned_topk", prefetch_kwargs=learned_kw)
                rows.append(_replay_row("learned_next", f, acc["recall"], acc["precision"],
                                        res.record(eb)))
                learned["replay"] = acc
    if cfg.dial.sim:
        setup = SimSetup(cfg, trace, tpath)
        for f in fracs:
            say(f"[sim {f:g}] lru, noisy_oracle x {len(grid)} ...")
            mem = {"cluster.expert_budget_fraction": f, "policy.cache": "lru"}
            m, _ = setup.run(f"lru@{f:g}", {**mem, "policy.prefetch": "none"})
            rows.append(_sim_row("lru", f, None, None, m))
            for r, p in grid:
                m, _ = setup.run(f"noisy r={r:g} p={p:g} @{f:g}", {**mem, **noisy_keys(cfg, r, p)})
                rows.append(_sim_row("noisy_oracle", f, r, p, m))
            if cfg.dial.checkpoint:
                m, pol = setup.run(f"learned_next@{f:g}",
                                   {**mem, **learned_keys(cfg, tpath, name="learned_topk")})
                acc = pol.accuracy()
                rows.append(_sim_row("learned_next", f, acc["recall"], acc["precision"], m))
                learned.setdefault("sim", {})[f"{f:g}"] = acc
    write_csv(rows, out / "accuracy.csv")
    write_json({"kind": "experiment_accuracy", "trace": cfg.trace.path,
                "prompts": len(trace.request_ids()), "tokens": trace.num_tokens, "rows": rows,
                "learned_accuracy": learned}, out / "results.json")
    _plot(rows, fracs, out / "accuracy.png")
    _summary(rows, fracs, learned, cfg, trace, out / "summary.md")
    print(f"accuracy: {out / 'accuracy.csv'}, {out / 'accuracy.png'}, {out / 'summary.md'}")
    return {"rows": rows, "learned": learned}


def _token_accuracy(pol: Any, trace: Any) -> dict[str, float]:
    """The learned predictor's per-token recall / precision on the replayed tokens (layers
    1..L-1: those a next-layer prefetcher predicts)."""
    from sim.predictor.table import measured_accuracy

    T = trace.num_tokens
    return measured_accuracy(pol._top[:T], trace.experts, trace.num_experts)


def _replay_row(series: str, f: float, r: Any, p: Any, rec: dict[str, Any]) -> dict[str, Any]:
    return {"driver": "replay", "series": series, "budget": f, "recall": r, "precision": p,
            "hit_rate": rec["hit_rate"], "h2d_gb": rec["h2d_bytes"] / 1e9,
            "prefetch_loads": rec["prefetched"]}


def _sim_row(series: str, f: float, r: Any, p: Any, m: dict[str, Any]) -> dict[str, Any]:
    from sim.app.experiments.dial import sim_row

    return {"driver": "sim", "series": series, "budget": f, "recall": r, "precision": p,
            **sim_row(m)}


PANELS = (("replay", "hit_rate", "replay hit rate"), ("sim", "hit_rate", "sim hit rate"),
          ("sim", "stall_s", "sim stall (s)"), ("sim", "h2d_gb", "sim H2D (GB)"))


def _plot(rows: list[dict[str, Any]], fracs: list[float], path: Path) -> None:
    from analysis.plots import pyplot, save_figure

    panels = [pn for pn in PANELS if any(r["driver"] == pn[0] for r in rows)]
    if not panels:
        return
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), len(fracs), figsize=(3.6 * len(fracs), 2.6 * len(panels)),
                             squeeze=False)
    precs = sorted({r["precision"] for r in rows if r["series"] == "noisy_oracle"})
    for i, (drv, key, label) in enumerate(panels):
        for j, f in enumerate(fracs):
            ax = axes[i][j]
            sel = [r for r in rows if r["driver"] == drv and r["budget"] == f]
            for p in precs:
                pts = sorted((r["recall"], r[key]) for r in sel
                             if r["series"] == "noisy_oracle" and r["precision"] == p)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=f"noisy oracle, precision {p:g}")
            for r in sel:
                if r["series"] == "lru":
                    ax.axhline(r[key], color="k", ls="--", lw=1, label="demand LRU (no prefetch)")
                if r["series"] == "learned_next":
                    ax.plot([r["recall"]], [r[key]], marker="*", ms=12, color="crimson", ls="",
                            label=f"learned (R {r['recall']:.2f}, P {r['precision']:.2f})")
            ax.set_xlabel("recall")
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{f:g} of the experts on the GPU")
            ax.set_ylim(0, 1.02) if key == "hit_rate" else ax.set_ylim(bottom=0)
            ax.legend(fontsize=5.5)
    fig.tight_layout()
    save_figure(fig, path)


def _summary(rows: list[dict[str, Any]], fracs: list[float], learned: dict[str, Any], cfg: Any,
             trace: Any, path: Path) -> None:
    from analysis.plots import command_line
    from sim.common.files import atomic_write_bytes

    lines = ["# Accuracy dial", "", f"`{command_line()}`", "",
             f"Trace {cfg.trace.path}"
             f"{f' (the checkpoint split {cfg.dial.split!r})' if cfg.dial.checkpoint else ''}"
             f": {len(trace.request_ids())} prompts, {trace.num_tokens} "
             f"tokens; model {cfg.model.name}, hardware {cfg.hardware.name}.", "",
             "| driver | memory | series | recall | precision | hit rate | stall (s) | H2D (GB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "" if r["recall"] is None else f"{r['recall']:.3f}"
        pre = "" if r["precision"] is None else f"{r['precision']:.3f}"
        st = f"{r['stall_s']:.3f}" if "stall_s" in r else ""
        lines.append(f"| {r['driver']} | {r['budget']:g} | {r['series']} | {rec} | {pre} | "
                     f"{r['hit_rate']:.3f} | {st} | {r['h2d_gb']:.2f} |")
    if learned:
        lines += ["", f"Learned predictor ({cfg.dial.checkpoint}) measured accuracy: "
                  f"{learned}"]
    lines += ["", "![accuracy](accuracy.png)", ""]
    atomic_write_bytes("\n".join(lines).encode(), path)
