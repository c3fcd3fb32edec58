"""Is my offloading setup worth it? One real question answered end to end (README, "Is my
offloading setup worth it?"): Mixtral-8x7B on one 16 GB GPU (a T4: PCIe 3) in a 64 GB PCIe 3
desktop (host=desktop-pcie3), chat at batch 1 (128-token prompts, 128-token answers), served
eagerly (engine=hf-generate). Compared: the per-layer cache size k (cluster.experts_per_layer),
copying missed experts to the GPU (per-layer LRU, mixtral-offloading's way) against computing
them on the host CPU (a static set of the k most used experts per layer on the GPU; cpu: every
miss on the CPU, Fiddler / kTransformers; auto: llama.cpp's rule, a batch of 32+ tokens copies),
and the experts' storage (2.6-bit and 3.25-bit HQQ, 4.83-bit GGUF Q4_K_M).

    python benchmarks/offload_question.py OUT [--requests 4] [key=value ...]

Writes OUT/offload_question.csv (one row per setting: TPOT and TTFT p50, what bounded the steps,
hit rate) and OUT/offload_question.png (TPOT against k, one line per way and storage). Extra
``key=value`` arguments are ``moesim sim`` overrides applied to every run (e.g.
``hardware=rtx-3060 host=desktop-pcie4``). A setting whose experts do not fit the GPU is
listed as not fitting.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BASE = ["model=mixtral-8x7b", "hardware=t4", "host=desktop-pcie3", "cluster=1x1", "engine=hf-generate",
        "workload.rate_rps=0.005", "workload.prompt_tokens_mean=128", "workload.output_tokens_mean=128",
        "serving.max_batch_requests=1", "output.progress=off"]
WAYS = {"copy": ["policy.cache=lru"],
        "cpu": ["policy.cache=static", "+policy.cache_args.fill=frequency", "offload.expert_exec=cpu"],
        "auto": ["policy.cache=static", "+policy.cache_args.fill=frequency", "offload.expert_exec=auto"]}
QUANTS = ["hqq-2bit", "hqq-3bit", "q4_k_m"]
KS = [1, 2, 3, 4, 5]


def run_one(overrides: list[str]) -> dict | None:
    from hydra import compose

    from sim.common.errors import ConfigError
    from sim.engine.run import simulate
    from sim.world.config import to_sim_config

    cfg = to_sim_config(compose("sim", overrides=overrides))
    try:
        _, m = simulate(cfg)
    except ConfigError as e:
        if "cannot hold" in str(e):
            return None
        raise
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from hydra import initialize_config_module

    from analysis.explain import offload_sentence
    from sim.world.config import register_configs

    register_configs()
    rows = []
    with initialize_config_module(config_module="conf", version_base="1.3"):
        for quant in QUANTS:
            for way, keys in WAYS.items():
                for k in KS:
                    ov = [*BASE, f"workload.num_requests={args.requests}", f"quant={quant}",
                          f"cluster.experts_per_layer={k}", *keys, *args.overrides]
                    m = run_one(ov)
                    row = {"quant": quant, "way": way, "k": k}
                    if m is None:
                        row.update(fits=False)
                    else:
                        off = m.get("offload", {})
                        row.update(fits=True, tpot_ms=round(m["tpot_s"]["p50"] * 1e3, 1),
                                   ttft_s=round(m["ttft_s"]["p50"], 3), hit_rate=round(m["hit_rate"], 3),
                                   bound=off.get("bound", ""), why=offload_sentence(m) or "")
                    rows.append(row)
                    print(f"{quant:9s} {way:5s} k={k}: " + (
                        "does not fit the GPU" if m is None else
                        f"TPOT {row['tpot_ms']:7.1f} ms  TTFT {row['ttft_s']:6.2f} s  "
                        f"hit {row['hit_rate']:.3f}  bound: {row['bound']}"), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["quant", "way", "k", "fits", "tpot_ms", "ttft_s", "hit_rate", "bound", "why"]
    with open(args.out / "offload_question.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out / "offload_question.png", " ".join(args.overrides))
    return 0


def plot(rows: list[dict], path: Path, extra: str) -> None:
    from analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"copy": "-", "cpu": "--", "auto": ":"}
    colours = {"hqq-2bit": "C0", "hqq-3bit": "C1", "q4_k_m": "C2"}
    for quant in QUANTS:
        for way in WAYS:
            pts = [(r["k"], r["tpot_ms"]) for r in rows if r["quant"] == quant and r["way"] == way
                   and r["fits"]]
            if pts:
                ax.plot(*zip(*pts), styles[way], marker="o", color=colours[quant],
                        label=f"{quant}, {way}")
    ax.set(xlabel="experts per layer on the GPU (k)", ylabel="TPOT p50 (ms)", ylim=(0, None),
           title="Mixtral-8x7B on a 16 GB T4 in a PCIe 3 desktop: copy vs CPU experts")
    ax.legend(fontsize=7, ncol=3)
    fig.text(0.01, 0.01, f"python benchmarks/offload_question.py OUT {extra}".strip(), fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
