"""The ``moesim trace`` pieces for captured and engine-recorded traces: the ``capture`` subcommand
and ``import`` of the vLLM, layer-parquet and SGLang formats. Kept apart so that ``sim/app/trace_cmd.py``
only registers them; nothing heavy (torch, transformers) is imported until a command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_capture_parser(sub) -> None:
    cap = sub.add_parser(
        "capture", help="record a routing trace from a local HuggingFace MoE checkpoint",
        description="Run prompts (JSONL: prompt, optional task, id) through a local checkpoint, prefill "
                    "then greedy decode, recording each token's top-k experts and gate weights per MoE "
                    "layer. Resumable: rerun the same command after an interruption.")
    cap.add_argument("model_dir", help="local checkpoint folder (config.json, weights, tokenizer)")
    cap.add_argument("--prompts", required=True, help="JSONL prompts file")
    cap.add_argument("-o", "--output", required=True, help="output routing trace (Parquet)")
    cap.add_argument("--max-new-tokens", type=int, default=16, help="greedy decode budget per prompt")
    cap.add_argument("--ignore-eos", action="store_true", help="decode the whole budget past end-of-sequence")
    cap.add_argument("--hidden-states", action="store_true",
                     help="also write the routers' input hidden states (fp16) to OUT.hidden.safetensors")
    cap.add_argument("--chunk-prompts", type=int, default=8, help="prompts per streamed part file")
    cap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    cap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def check_device(device: str, flag: str = "--device", sep: str = " ") -> None:
    """A torch device this machine has, else a one-line error saying what to install or give
    (before the model is loaded)."""
    from sim.common.errors import MoesimError

    kind = device.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise MoesimError(f"{flag}{sep}{device}: not a torch device; expected cpu, cuda, cuda:N or mps")
    if kind == "cpu":
        return
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        build = "the CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
        raise MoesimError(f"{flag}{sep}{device}: CUDA is not available here ({build}); use {flag}{sep}cpu, "
                          f"or install the CUDA torch build (pip install torch --index-url "
                          f"https://download.pytorch.org/whl/cu124) on a machine with a GPU")
    if kind == "cuda" and ":" in device:
        idx = device.split(":", 1)[1]
        if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
            raise MoesimError(f"{flag}{sep}{device}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise MoesimError(f"{flag}{sep}{device}: MPS is not available here; use {flag}{sep}cpu")


def cmd_capture(a: argparse.Namespace) -> int:
    from traces.capture import capture

    check_device(a.device)

    r = capture(a.model_dir, a.prompts, a.output, max_new_tokens=a.max_new_tokens,
                hidden_states=a.hidden_states, chunk_prompts=a.chunk_prompts, dtype=a.dtype,
                device=a.device, ignore_eos=a.ignore_eos)
    t = r.trace
    print(f"wrote {a.output}: {len(t.request_ids())} requests, {t.num_tokens} tokens "
          f"({int((t.tokens['phase'] == 'decode').sum())} decode), {t.num_layers} MoE layers "
          f"{t.meta.layer_ids}, {t.num_experts} experts, top-{t.top_k} ({t.meta.extra['architecture']})"
          + (f"; hidden states in {r.hidden}" if r.hidden else ""))
    eb = t.meta.extra.get("expert_bytes")
    if eb:
        print(f"one routed expert is {eb} bytes ({t.meta.extra['dtype']}): "
              f"moesim cache trace.path={a.output} expert_bytes={eb}")
    return 0


def import_engine_format(a: argparse.Namespace, out: Path) -> bool:
    """Handle ``import --format`` for the formats of this module; False for any other format."""
    from traces.format import write_trace

    if a.format == "sglang-expert-distribution":
        from traces.load_table import import_sglang_distribution, write_load_table

        lt = import_sglang_distribution(a.src, model=a.model or "sglang")
        write_load_table(lt, out)
        print(f"wrote {out}: load table, {lt.meta.num_layers} layers x {lt.meta.num_experts} experts, "
              f"{int(lt.counts.sum())} routed token-slots (counts only: placement and stats, "
              f"no cache replay)")
        return True
    if a.format == "vllm-routed-experts":
        from traces.engine_import import import_vllm_routed_experts

        trace = import_vllm_routed_experts(a.src, a.num_experts, model=a.model or "vllm",
                                           task=a.task or "default")
    elif a.format == "layer-parquet":
        from traces.engine_import import import_layer_parquet

        trace = import_layer_parquet(a.src, a.num_experts, token_ids=a.token_ids, seq_len=a.seq_len,
                                     max_tokens=a.max_tokens, model=a.model or "layer-parquet",
                                     task=a.task or "pretrain")
    else:
        return False
    write_trace(trace, out)
    print(f"wrote {out}: {len(trace.request_ids())} requests, {trace.num_tokens} tokens, "
          f"{trace.num_layers} layers, {trace.num_experts} experts, top-{trace.top_k}", file=sys.stdout)
    return True
