"""Cache replay speed: expert accesses per second per policy (plain mode, one core).

Usage: python benchmarks/replay_speed.py [TRACE.parquet] [--fracs 0.25,0.5,0.75] [--policies ...]
Without a trace it builds a synthetic one of the DeepSeek-V2-Lite shape (94,165 tokens, 26 layers,
64 experts, top-6, skewed popularity) from a fixed seed. Prints one line per (policy, fraction):
accesses, CPU seconds of this process (the machine may be shared), wall seconds, accesses per CPU
second (the target is >= 1,000,000 per policy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sim.replay.cache import replay_plain
from traces.format import RoutingTrace, TraceMeta, make_tokens, read_trace


def synthetic(T: int = 94165, L: int = 26, E: int = 64, K: int = 6, seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    g = rng.gumbel(size=(T, L, E)) + np.log(rng.dirichlet(np.full(E, 0.3), size=L))[None]  # (T, L, E)
    ex = np.argsort(-g, axis=2)[:, :, :K].astype(np.int16)  # (T, L, K) top-K without replacement
    rid = np.arange(T) // 94
    pos = np.arange(T) % 94
    return RoutingTrace(ex, None, make_tokens(rid, pos, "prefill", "chat"),
                        TraceMeta("DeepSeek-V2-Lite-Chat", L, E, K, source="synthetic"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?")
    ap.add_argument("--fracs", default="0.25,0.5,0.75")
    ap.add_argument("--policies", default="lru,lfu,fifo,lifo,priority,keep_predicted,belady")
    a = ap.parse_args()
    tr = read_trace(a.trace) if a.trace else synthetic()
    print(f"trace: {a.trace or 'synthetic'}: {tr.num_tokens} tokens x {tr.num_layers} layers x "
          f"top-{tr.top_k} = {tr.num_tokens * tr.num_layers * tr.top_k:,} accesses")
    for frac in [float(f) for f in a.fracs.split(",")]:
        for pol in a.policies.split(","):
            t0, w0 = time.process_time(), time.perf_counter()
            r = replay_plain(tr, pol, frac)
            dt, wall = time.process_time() - t0, time.perf_counter() - w0
            print(f"{pol:<15} frac={frac:.2f} accesses={r.accesses:,} cpu_s={dt:.2f} wall_s={wall:.2f} "
                  f"accesses_per_cpu_s={r.accesses / dt:,.0f} hit_rate={r.hit_rate:.4f}", flush=True)


if __name__ == "__main__":
    main()
