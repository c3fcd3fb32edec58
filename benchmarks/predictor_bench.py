"""Train and evaluate the expert predictor on a routing trace; print the figures.

    python benchmarks/predictor_bench.py TRACE.parquet [OUT_DIR] [train overrides ...]

Modes: predictor.token.mode=token (pieces only), token_prev (+ this token's layer l-1 experts),
token_layers (+ this token's experts at all layers < l and the previous token's at layers < l;
predictor.token.prev_token=same: <= l, decode only). E.g.

    python benchmarks/predictor_bench.py /tmp/ds.parquet /tmp/pb predictor.token.mode=token_layers

Prints training time, test-prompt F1 of the per-token predictor against its baselines, the
per-prompt (eMoE-A) F1 and the staleness curve. Targets (issue "The eMoE expert predictor"):
token F1 (overlap / top-k) >= 0.82 on held-out prompts, above every baseline; train in minutes
on 2 CPU threads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    trace = argv[0]
    out = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="predictor_bench_"))
    extra = argv[2:]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sim", "predictor", "train", f"trace.path={trace}",
                    f"hydra.run.dir={out / 'train'}", *extra], check=True)
    train_wall_s = time.perf_counter() - t0
    subprocess.run([sys.executable, "-m", "sim", "predictor", "eval",
                    f"checkpoint={out / 'train' / 'checkpoint'}", f"trace.path={trace}",
                    f"hydra.run.dir={out / 'eval'}"], check=True)
    m = json.loads((out / "eval" / "metrics.json").read_text())
    t, p = m["token"], m["prompt"]
    print(f"train wall time: {train_wall_s:.1f} s")
    print(f"token predictor inputs: {t['inputs']}")
    print(f"token: F1 {m['f1']:.4f}  macro-binary F1 {t['predictor']['f1_macro_binary']:.4f}  "
          f"top1 {t['predictor']['top1_accuracy']:.4f}")
    for k, v in t.get("references", {}).items():
        print(f"  reference {k:15s} F1 {v['f1']:.4f}  macro-binary {v['f1_macro_binary']:.4f}")
    for k, v in t["baselines"].items():
        print(f"  baseline {k:16s} F1 {v['f1']:.4f}  macro-binary {v['f1_macro_binary']:.4f}")
    print(f"prompt (M={p['set_size']}): F1 {p['predictor']['f1']:.4f} coverage "
          f"{p['predictor']['coverage']:.4f}; baselines "
          + ", ".join(f"{k} {v['f1']:.4f}" for k, v in p["baselines"].items()))
    print("staleness: " + ", ".join(f"p={r['period']}: {r['f1']:.4f}" for r in m["staleness"]))
    print(f"size: {m['size']['token_params'] + m['size']['prompt_params']} params, "
          f"{100 * m['size']['share_of_moe_memory']:.3f}% of the MoE model; time per token "
          f"{1e3 * m['time']['token_s_per_token']:.3f} ms")
    print(f"outputs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
