"""``moesim trace capture``: record a routing trace by running prompts through a local HuggingFace
MoE checkpoint (never a download: ``local_files_only``, ``HF_HUB_OFFLINE=1``).

Each prompt is one request: its prompt tokens go through the model in one forward pass (phase
``prefill``, positions 0..P-1), then greedy decoding runs up to ``max_new_tokens``: the n-th
generated token goes through the model as a ``decode`` token at position P+n-1, until the budget or
the end-of-sequence token (unless ``ignore_eos``). The last generated token never goes through the
model, so a request has P + (generated - 1) rows (as vLLM counts them). ``text`` is the text of the
token that went through (``tokenizer.decode([id])``).

A forward hook on each MoE layer's router module records the ids and gate weights the router
returned (see :mod:`traces.capture_arch`); they are re-derived from the router logits with the
architecture's router function (:mod:`traces.routing`) and the count of (token, layer) pairs whose
expert set differs is kept in the metadata (``extra.router_check``). With ``hidden_states`` the
router's input is kept per (token, layer) and written, fp16, to ``OUT`` with the suffix
``.hidden.safetensors``: one tensor ``hidden_states`` (T, L, H) in the trace's row order.

Streaming and resume: every ``chunk_prompts`` complete prompts become one part file (a valid
routing trace, written atomically) in ``OUT.parts/`` beside the output, with a manifest of the
settings. A capture that dies keeps its complete parts; rerun with the same settings, it starts after
the last complete part (the prompts of an unfinished part are captured again) and finally writes
OUT, then removes the parts folder. A rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import MoesimError, TraceFormatError, short_error
from sim.common.files import atomic_write, atomic_write_bytes
from traces.format import RoutingTrace, TraceMeta, make_tokens, read_trace, write_trace
from traces.request_import import read_jsonl

#: test hook: kill the process (SIGKILL) after this many prompts captured in this run
KILL_ENV = "MOESIM_CAPTURE_KILL_AFTER"


@dataclass(frozen=True)
class Prompt:
    id: str
    task: str
    text: str


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """JSONL, one object per line: ``prompt`` (non-empty string), optional ``task`` (string,
    default "default") and ``id`` (string or int, default ``p<line>``); ids must be unique."""
    path = Path(path)
    out: list[Prompt] = []
    seen: set[str] = set()
    for n, obj in read_jsonl(path):
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{path}: line {n}: expected an object with \"prompt\"")
        p = obj.get("prompt")
        if not isinstance(p, str) or not p:
            raise TraceFormatError(f"{path}: line {n}: \"prompt\" must be a non-empty string")
        task = obj.get("task", "default")
        rid = obj.get("id", f"p{n}")
        if not isinstance(task, str) or not task:
            raise TraceFormatError(f"{path}: line {n}: \"task\" must be a non-empty string")
        if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
            raise TraceFormatError(f"{path}: line {n}: \"id\" must be a string or an integer")
        rid = str(rid)
        if rid in seen:
            raise TraceFormatError(f"{path}: line {n}: id {rid!r} appears twice, expected unique ids")
        seen.add(rid)
        out.append(Prompt(rid, task, p))
    if not out:
        raise TraceFormatError(f"{path}: no prompts")
    return out


def hidden_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".hidden.safetensors")


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


# ------------------------------------------------------------------------------------------------
# the model side
# ------------------------------------------------------------------------------------------------
class _Recorder:
    """Forward hooks on the routers; collects one forward pass at a time."""

    def __init__(self, routers: list[tuple[int, Any]], keep_hidden: bool) -> None:
        self.routers = routers
        self.keep_hidden = keep_hidden
        self.calls: dict[int, tuple] = {}
        self.handles = [mod.register_forward_hook(self._hook(i)) for i, (_, mod) in enumerate(routers)]

    def _hook(self, i: int) -> Callable:
        def hook(module, args, output):
            if i in self.calls:
                raise MoesimError(f"router of layer {self.routers[i][0]} ran twice in one forward pass")
            x = args[0]
            logits, weights, ids = output[0], output[1], output[2]
            h = x.reshape(-1, x.shape[-1]).detach().to("cpu").half().numpy() if self.keep_hidden else None
            self.calls[i] = (logits.detach().float().cpu().numpy(), weights.detach().float().cpu().numpy(),
                             ids.detach().cpu().numpy(), h)
        return hook

    def take(self, n_tokens: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray | None]:
        """experts (n, L, K), weights (n, L, K), logits per layer, hidden (n, L, H) or None."""
        if len(self.calls) != len(self.routers):
            missing = [self.routers[i][0] for i in range(len(self.routers)) if i not in self.calls]
            raise MoesimError(f"routers of layers {missing} did not run in a forward pass")
        c = [self.calls[i] for i in range(len(self.routers))]
        self.calls = {}
        for (layer, _), (_lg, w, ids, _h) in zip(self.routers, c):
            if ids.shape[0] != n_tokens or w.shape != ids.shape:
                raise MoesimError(f"router of layer {layer} returned ids {ids.shape} and weights "
                                  f"{w.shape}, expected ({n_tokens}, top_k)")
        ex = np.stack([x[2] for x in c], axis=1).astype(np.int16)
        w = np.stack([x[1] for x in c], axis=1).astype(np.float32)
        h = np.stack([x[3] for x in c], axis=1) if self.keep_hidden else None
        return ex, w, [x[0] for x in c], h

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    arch: Any
    routers: list[tuple[int, Any]]
    params: list[dict[str, Any]]
    meta: TraceMeta


def _load(model_dir: Path, dtype: str, device: str) -> _Loaded:
    from traces.capture_arch import (
        arch_for,
        expert_bytes_of,
        find_routers,
        num_experts_of,
        router_params,
        shared_experts,
    )

    cfg_file = model_dir / "config.json"
    if not model_dir.is_dir() or not cfg_file.is_file():
        raise MoesimError(f"{model_dir}: expected a local HuggingFace checkpoint folder with config.json")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise TraceFormatError(f"{cfg_file}: not a JSON object") from None
    try:
        import torch
        import transformers
    except ImportError:
        raise MoesimError("moesim trace capture needs transformers: pip install -e .[capture]") from None
    arch = arch_for(model_type, str(cfg_file))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    tok_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                 "spiece.model")
    if not any((model_dir / f).is_file() for f in tok_files):
        raise MoesimError(f"{model_dir}: the checkpoint has no tokenizer (none of "
                          f"{', '.join(tok_files)}); copy the model's tokenizer files into it")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True,
                                                                  dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise MoesimError(f"{model_dir}: cannot load the checkpoint ({short_error(exc)})") from None
    model.to(device).eval()
    routers = find_routers(model, arch)
    E = num_experts_of(routers[0][1])
    K = 2 if arch.routing == "sparsemixer" else int(model.config.num_experts_per_tok)
    meta = TraceMeta(
        model=model_dir.name, num_layers=len(routers), num_experts=E, top_k=K,
        source=f"moesim trace capture: {model_dir}", layer_ids=[i for i, _ in routers],
        extra={"architecture": arch.name, "model_type": arch.model_type, "routing": arch.routing_text,
               "shared_experts": shared_experts(arch, model.config),
               "expert_bytes": expert_bytes_of(model, routers[0][0], E),
               "transformers": transformers.__version__, "torch": torch.__version__,
               "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")})
    params = [router_params(arch, mod, model.config) for _, mod in routers]
    return _Loaded(model, tok, arch, routers, params, meta)


def _run_prompt(ld: _Loaded, rec: _Recorder, prompt: Prompt, max_new_tokens: int, ignore_eos: bool,
                device: str, check: list[int]) -> tuple[RoutingTrace, np.ndarray | None]:
    import torch

    from traces.routing import route, same_sets

    ids = ld.tokenizer(prompt.text, return_tensors="pt").input_ids.to(device)
    P = int(ids.shape[1])
    if P == 0:
        raise MoesimError(f"prompt {prompt.id!r} has no tokens")
    eos = ld.model.config.eos_token_id
    eos = set() if eos is None or ignore_eos else set(eos if isinstance(eos, list) else [eos])
    blocks, tok_ids, phases = [], ids[0].tolist(), ["prefill"] * P
    # transformers 5.x renamed past_key_values to cache; use whichever this version's forward takes
    key = "cache" if "cache" in inspect.signature(ld.model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = ld.model(input_ids=ids, use_cache=True)
        blocks.append(rec.take(P))
        past, nxt = getattr(out, key), int(out.logits[0, -1].argmax())
        for _ in range(max(0, max_new_tokens - 1)):
            if nxt in eos:
                break
            out = ld.model(input_ids=torch.tensor([[nxt]], device=device), use_cache=True, **{key: past})
            blocks.append(rec.take(1))
            tok_ids.append(nxt)
            phases.append("decode")
            past, nxt = getattr(out, key), int(out.logits[0, -1].argmax())
    experts = np.concatenate([b[0] for b in blocks])
    weights = np.concatenate([b[1] for b in blocks])
    for l, p in enumerate(ld.params):  # the router function re-derives what the router returned
        logits = np.concatenate([b[2][l] for b in blocks])
        ref, _ = route(ld.arch.routing, logits, p)
        check[0] += int(experts.shape[0])
        check[1] += int((~same_sets(ref, experts[:, l].astype(np.int64))).sum())
    hidden = np.concatenate([b[3] for b in blocks]) if rec.keep_hidden else None
    n = len(tok_ids)
    tokens = make_tokens(request_id=prompt.id, position=np.arange(n), phase=np.array(phases),
                         task=prompt.task, text=ld.tokenizer.batch_decode([[t] for t in tok_ids]))
    return RoutingTrace(experts=experts, weights=weights, tokens=tokens, meta=ld.meta), hidden


# ------------------------------------------------------------------------------------------------
# parts, resume, final files
# ------------------------------------------------------------------------------------------------
def _manifest(model_dir: Path, prompts_file: Path, settings: dict[str, Any]) -> dict[str, Any]:
    return {"model_dir": str(model_dir.resolve()),
            "prompts_sha256": hashlib.sha256(prompts_file.read_bytes()).hexdigest(), **settings}


def _open_parts(pdir: Path, manifest: dict[str, Any], prompts: list[Prompt]) -> tuple[list[Path], int]:
    """Complete part files already there (checked against the prompts) and the prompts they hold."""
    mfile = pdir / "manifest.json"
    if mfile.exists():
        old = json.loads(mfile.read_text())
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise MoesimError(f"{pdir}: an interrupted capture with other settings ({', '.join(diff)}) "
                              f"is there; rerun with the same settings or remove the folder")
    else:
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(manifest, indent=1).encode(), mfile)
    parts = sorted(pdir.glob("part-*.parquet"))
    done = 0
    for p in parts:
        got = read_trace(p).request_ids()
        want = [q.id for q in prompts[done:done + len(got)]]
        if got != want:
            raise MoesimError(f"{p}: holds requests {got[:3]}..., expected {want[:3]}... from the prompts")
        done += len(got)
    return parts, done


def _save_npy(arr: np.ndarray, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


def write_safetensors_f16(arrays: list[Path], shape_tail: tuple[int, int], out: Path,
                          meta: dict[str, str]) -> None:
    """Stream the fp16 .npy parts into one safetensors file with tensor ``hidden_states``."""
    T = sum(int(np.load(p, mmap_mode="r").shape[0]) for p in arrays)
    nbytes = T * shape_tail[0] * shape_tail[1] * 2
    header = {"__metadata__": meta,
              "hidden_states": {"dtype": "F16", "shape": [T, *shape_tail], "data_offsets": [0, nbytes]}}
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for p in arrays:
                f.write(np.ascontiguousarray(np.load(p), dtype="<f2").tobytes())

    atomic_write(out, write)


def _concat(traces: list[RoutingTrace]) -> RoutingTrace:
    import pandas as pd

    return RoutingTrace(experts=np.concatenate([t.experts for t in traces]),
                        weights=np.concatenate([t.weights for t in traces]),
                        tokens=pd.concat([t.tokens for t in traces], ignore_index=True),
                        meta=traces[0].meta)


@dataclass
class CaptureResult:
    trace: RoutingTrace
    resumed_prompts: int
    hidden: Path | None


def capture(model_dir: str | os.PathLike, prompts_file: str | os.PathLike, out: str | os.PathLike, *,
            max_new_tokens: int = 16, hidden_states: bool = False, chunk_prompts: int = 8,
            dtype: str = "auto", device: str = "cpu", ignore_eos: bool = False,
            log: Callable[[str], None] | None = None) -> CaptureResult:
    log = log or (lambda s: print(s, file=sys.stderr))
    if max_new_tokens < 0 or chunk_prompts < 1:
        raise MoesimError("--max-new-tokens must be >= 0 and --chunk-prompts >= 1")
    model_dir, prompts_file, out = Path(model_dir), Path(prompts_file), Path(out)
    prompts = read_prompts(prompts_file)
    ld = _load(model_dir, dtype, device)
    settings = {"max_new_tokens": max_new_tokens, "hidden_states": hidden_states, "dtype": dtype,
                "chunk_prompts": chunk_prompts, "ignore_eos": ignore_eos}
    pdir = parts_dir(out)
    parts, done = _open_parts(pdir, _manifest(model_dir, prompts_file, settings), prompts)
    if done:
        log(f"moesim trace capture: resuming after {done} complete prompts in {pdir}")
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    rec = _Recorder(ld.routers, hidden_states)
    check = [0, 0]
    try:
        i = done
        while i < len(prompts):
            batch = prompts[i:i + chunk_prompts]
            got = []
            for j, pr in enumerate(batch):
                got.append(_run_prompt(ld, rec, pr, max_new_tokens, ignore_eos, device, check))
                if kill_after and i - done + j + 1 >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: die mid-chunk
            part = pdir / f"part-{len(parts):05d}.parquet"
            if hidden_states:
                _save_npy(np.concatenate([g[1] for g in got]), part.with_suffix(".hidden.npy"))
            write_trace(_concat([g[0] for g in got]), part)  # the part counts once this file exists
            parts.append(part)
            i += len(batch)
            log(f"moesim trace capture: {i}/{len(prompts)} prompts")
    finally:
        rec.close()
    full = _concat([read_trace(p) for p in parts])
    full.meta = ld.meta
    full.meta.extra.update(max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
                           router_check={"token_layers_this_run": check[0], "mismatched": check[1]})
    if check[1]:
        log(f"moesim trace capture: warning: {check[1]} of {check[0]} (token, layer) expert sets differ "
            f"from the documented router function (ties, or a changed transformers router)")
    hpath = None
    if hidden_states:
        hpath = hidden_path(out)
        H = int(np.load(parts[0].with_suffix(".hidden.npy"), mmap_mode="r").shape[2])
        full.meta.extra["hidden_states"] = hpath.name
        write_safetensors_f16([p.with_suffix(".hidden.npy") for p in parts], (full.num_layers, H), hpath,
                              {"trace": out.name, "layer_ids": json.dumps(full.meta.layer_ids),
                               "rows": "the trace's rows, in order"})
    write_trace(full, out)
    for p in sorted(pdir.iterdir()):
        p.unlink()
    pdir.rmdir()
    return CaptureResult(full, done, hpath)
