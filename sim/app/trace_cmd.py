"""``moesim trace``: import, validate, summarise, fit and synthesise routing / request traces.

::

    moesim trace import --format FORMAT SRC... -o OUT.parquet
    moesim trace capture MODEL_DIR --prompts PROMPTS.jsonl -o OUT.parquet [--max-new-tokens N]
    moesim trace validate FILE
    moesim trace stats FILE [--json] [--plots DIR]
    moesim trace fit TRACE.parquet -o PARAMS.json
    moesim trace derive MODEL -o PARAMS.json [--source NAME] [--seed S]
    moesim trace synth --params NAME|FILE --requests N --tokens-per-request T --seed S -o OUT.parquet
    moesim trace synth --kind uniform|zipf [--zipf-a A] --params NAME|FILE -o OUT.parquet

Bad input raises :class:`~sim.common.errors.MoesimError`; the ``moesim`` dispatcher prints it on one line
and exits 2, and no output file is written (writes are atomic and come last).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sim.common.errors import MoesimError, TraceFormatError


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line MoesimError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise MoesimError(f"{self.prog}: {message}")


def _seed(text: str) -> int:
    """A seed numpy takes: an integer in [0, 2**32 - 1] (sim.world.ranges.SEED, as seed= everywhere)."""
    from sim.world.ranges import SEED

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not SEED.ok(v):
        raise argparse.ArgumentTypeError(f"{v}; expected {SEED.describe(integer=True)}")
    return v


def _build_parser() -> argparse.ArgumentParser:
    from traces.engine_import import ENGINE_FORMATS
    from traces.importers import ROUTING_FORMATS
    from traces.load_table import LOAD_FORMATS
    from traces.request_import import WORKLOAD_FORMATS

    formats = {**ROUTING_FORMATS, **ENGINE_FORMATS, **LOAD_FORMATS, **WORKLOAD_FORMATS}
    p = _Parser(prog="moesim trace", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser,
                           metavar="{import,capture,validate,stats,fit,derive,synth}")
    sub.required = True

    imp = sub.add_parser("import", help="import real routing or request traces",
                         description="formats: " + "; ".join(f"{k}: {v}" for k, v in formats.items()))
    imp.add_argument("--format", required=True, choices=list(formats))
    imp.add_argument("src", nargs="+", help="source files, imported in this order")
    imp.add_argument("-o", "--output", required=True, help="output Parquet")
    imp.add_argument("--missing", choices=["drop", "fail"], default="drop",
                     help="speculative-moe-jsonl: drop tokens lacking a layer record (reported) or fail")
    imp.add_argument("--id-scope", choices=["dataset", "file"], default="dataset",
                     help="speculative-moe-jsonl: request id = dataset/problem_id or file-stem/problem_id")
    imp.add_argument("--task", default=None, help="task name for every request (default: from the source)")
    imp.add_argument("--zero", choices=["fail", "drop"], default="fail",
                     help="workload formats: requests with 0 prompt or output tokens fail or are dropped")
    imp.add_argument("--num-experts", type=int, default=None,
                     help="vllm-routed-experts, layer-parquet: the model's routed experts (not in the files)")
    imp.add_argument("--model", default=None, help="model name recorded in the output's metadata")
    imp.add_argument("--token-ids", nargs="+", default=[],
                     help="layer-parquet: token-id Parquet files or folder")
    imp.add_argument("--seq-len", type=int, default=None,
                     help="layer-parquet: tokens per request (default: the whole stream is one request)")
    imp.add_argument("--max-tokens", type=int, default=None, help="layer-parquet: import the first N tokens")

    from traces.capture_cli import add_capture_parser

    add_capture_parser(sub)

    val = sub.add_parser("validate", help="check a routing trace or workload Parquet")
    val.add_argument("file")

    st = sub.add_parser("stats", help="summarise a routing trace (or a workload)")
    st.add_argument("file")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--plots", default=None, help="write PNG plots into this folder")

    fit = sub.add_parser("fit", help="fit synthetic-generator parameters to a routing trace")
    fit.add_argument("trace")
    fit.add_argument("-o", "--output", required=True, help="parameters JSON")
    fit.add_argument("--seed", type=_seed, default=0, help="seed for the calibration runs")

    der = sub.add_parser("derive", help="derive generator parameters for a model with no real trace "
                                        "from the nearest fitted one (traces/synth_derive.py)")
    der.add_argument("model", help="a conf/model/ name (deepseek-v3, qwen3-30b-a3b, mixtral-8x22b)")
    der.add_argument("-o", "--output", required=True, help="parameters JSON")
    der.add_argument("--source", default=None, help="fitted shipped parameters to derive from "
                                                    "(default: the nearest, traces.synth_derive.NEAREST)")
    der.add_argument("--seed", type=_seed, default=0, help="seed for the label shuffle and calibration runs")
    der.add_argument("--eps", type=float, default=0.0,
                     help="coherence of the expert split, 0 (children keep their channel) .. 1 (none)")

    syn = sub.add_parser("synth", help="sample a synthetic routing trace")
    syn.add_argument("--kind", choices=["fitted", "uniform", "zipf"], default="fitted")
    syn.add_argument("--params", default="deepseek-v2-lite",
                     help="fitted parameters: a shipped name (traces.synth_params.SHIPPED) or a JSON file")
    syn.add_argument("--zipf-a", type=float, default=1.2, help="Zipf exponent for --kind zipf")
    syn.add_argument("--requests", type=int, default=16)
    syn.add_argument("--tokens-per-request", type=int, default=128)
    syn.add_argument("--task", default=None, help="task to sample (default: tasks in fitted proportion)")
    syn.add_argument("--phase", choices=["prefill", "decode"], default=None)
    syn.add_argument("--seed", type=_seed, default=0)
    syn.add_argument("-o", "--output", required=True)
    return p


def _cmd_import(a: argparse.Namespace) -> int:
    from traces.format import write_trace

    out = Path(a.output)
    from traces.capture_cli import import_engine_format

    if import_engine_format(a, out):
        return 0
    if a.format in ("azure-csv", "mooncake-jsonl"):
        from traces.request_import import import_workload
        from traces.workload import write_workload

        dropped: dict[str, int] = {}
        wl = import_workload(a.src, a.format, task=a.task, zero=a.zero, dropped=dropped)
        for f, n in dropped.items():
            print(f"moesim trace import: {f}: dropped {n} requests with 0 prompt or output tokens",
                  file=sys.stderr)
        write_workload(wl, out, source=f"{a.format}: {', '.join(a.src)}")
        print(f"wrote {out}: {len(wl)} requests over {wl['arrival_s'].iloc[-1]:.1f} s")
        return 0
    if a.format == "moe-beyond-csv":
        from traces.importers import import_moe_beyond_csv

        kw = {"task": a.task} if a.task else {}
        trace = import_moe_beyond_csv(a.src, **kw)
    else:
        from traces.importers import MissingReport, import_speculative_moe_jsonl

        rep = MissingReport()
        trace = import_speculative_moe_jsonl(a.src, missing=a.missing, id_scope=a.id_scope, report=rep)
        if a.task:
            trace.tokens["task"] = a.task
        for line in rep.lines():
            print(f"moesim trace import: {line}", file=sys.stderr)
    write_trace(trace, out)
    print(f"wrote {out}: {len(trace.request_ids())} requests, {trace.num_tokens} tokens, "
          f"{trace.num_layers} layers, {trace.num_experts} experts, top-{trace.top_k}")
    return 0


def _kind(path: Path) -> str:
    from traces.format import read_meta

    return str(read_meta(path).get("kind"))


def _cmd_validate(a: argparse.Namespace) -> int:
    """Every format some command reads: a moesim Parquet (routing trace, workload, load table),
    or a raw request trace (Azure CSV, Mooncake JSONL) as ``moesim sim workload.path=`` reads it;
    the line says which it found."""
    from sim.common.files import require_file

    path = require_file(a.file, "FILE", what="a routing trace, request trace or load table")
    with open(path, "rb") as f:
        parquet = f.read(4) == b"PAR1"
    if not parquet and path.suffix.lower() != ".parquet":
        from traces.request_import import load_workload, sniff_workload_format

        try:
            fmt = sniff_workload_format(path)
        except TraceFormatError as exc:
            raise TraceFormatError(f"{exc} (trace validate reads moesim Parquet files (routing "
                                   f"traces, workloads, load tables), Azure CSV and Mooncake "
                                   f"JSONL request traces)") from None
        wl = load_workload(path)
        print(f"{path}: valid request trace ({fmt}, as 'moesim sim workload.path=' reads it), "
              f"{len(wl)} requests over {float(wl['arrival_s'].iloc[-1]):.1f} s")
        return 0
    kind = _kind(path)
    if kind == "load":
        from traces.load_table import read_load_table

        lt = read_load_table(path)
        print(f"{path}: valid load table, {lt.meta.num_layers} layers x {lt.meta.num_experts} experts, "
              f"{int(lt.counts.sum())} routed token-slots (counts only: no cache replay)")
        return 0
    if kind == "workload":
        from traces.workload import read_workload

        wl = read_workload(path)
        print(f"{path}: valid workload, {len(wl)} requests")
        return 0
    from traces.format import read_trace

    tr = read_trace(path)
    print(f"{path}: valid routing trace, {len(tr.request_ids())} requests, {tr.num_tokens} tokens, "
          f"{tr.num_layers} layers, {tr.num_experts} experts, top-{tr.top_k}")
    return 0


def _cmd_stats(a: argparse.Namespace) -> int:
    path = Path(a.file)
    kind = _kind(path)
    if kind == "load":
        from traces.load_table import format_load_stats, load_stats, read_load_table

        s = load_stats(read_load_table(path))
        print(json.dumps(s) if a.json else format_load_stats(s))
        return 0
    if kind == "workload":
        from traces.stats import workload_stats
        from traces.workload import read_workload

        s = workload_stats(read_workload(path))
    else:
        from sim.app.progress import StepProgress
        from traces.format import read_trace
        from traces.stats import CORE_PARTS, trace_stats

        tr = read_trace(path)
        tasks = len(set(tr.request_tasks()))
        bar = StepProgress("moesim trace stats", len(CORE_PARTS) + (tasks if tasks > 1 else 0),
                           f"parts of {tr.num_tokens} tokens")
        s = trace_stats(tr, on_step=bar.step)
        if a.plots:
            from analysis.trace_plots import write_plots

            written = write_plots(_plot_data(tr, s), a.plots)
            print(f"wrote {len(written)} plots to {a.plots}", file=sys.stderr)
    if a.json:
        print(json.dumps(s))
    else:
        from traces.stats import format_stats

        print(format_stats(s))
    return 0


def _plot_data(tr: Any, stats: dict[str, Any]) -> Any:
    """The numbers ``trace stats --plots`` draws (:class:`analysis.trace_plots.TracePlotData`) of
    the routing trace ``tr``, whose :func:`traces.stats.trace_stats` are ``stats``."""
    import numpy as np

    from analysis.trace_plots import TracePlotData, transition_layers
    from traces.stats import popularity_counts, reuse_stats, transition_counts

    m = tr.meta
    transitions = {}
    for l in transition_layers(m.num_layers):
        C = transition_counts(tr.experts, m.num_experts, l).astype(np.float64)  # (E, E)
        transitions[l] = C / np.maximum(C.sum(axis=1, keepdims=True), 1)
    return TracePlotData(model=m.model, layer_ids=list(m.layer_ids), num_experts=m.num_experts,
                         top_k=m.top_k, num_requests=len(tr.request_ids()), num_tokens=tr.num_tokens,
                         popularity_share=popularity_counts(tr) / float(tr.num_tokens),
                         reuse=stats.get("reuse_distance") or reuse_stats(tr), transitions=transitions)


def _cmd_fit(a: argparse.Namespace) -> int:
    from sim.common.files import atomic_write_bytes
    from traces.format import read_trace
    from traces.synth_fit import fit_params

    tr = read_trace(a.trace)
    params = fit_params(tr, seed=a.seed, command=" ".join(["moesim", "trace", "fit", a.trace, "-o",
                                                              a.output, "--seed", str(a.seed)]),
                        progress=True)
    atomic_write_bytes((json.dumps(params, indent=1) + "\n").encode(), a.output)
    print(f"wrote {a.output}: tasks {list(params['tasks'])}")
    return 0


def _cmd_derive(a: argparse.Namespace) -> int:
    from sim.common.files import atomic_write_bytes
    from traces.synth_derive import derive_params

    cmd = ["moesim", "trace", "derive", a.model, "-o", a.output, "--seed", str(a.seed)]
    if a.source:
        cmd += ["--source", a.source]
    if a.eps:
        cmd += ["--eps", str(a.eps)]
    params = derive_params(a.model, source=a.source, eps=a.eps, seed=a.seed, command=" ".join(cmd))
    atomic_write_bytes((json.dumps(params, separators=(",", ":")) + "\n").encode(), a.output)
    for n, t in params["tasks"].items():
        c = t["calibration"]
        print(f"task {n}: beta {t['beta']}, target {c['target']}, achieved {c['achieved']}")
    print(f"wrote {a.output} (derived from {params['derivation']['from']})")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    import numpy as np

    from traces.format import write_trace
    from traces.synth import sample_baseline, sample_trace
    from traces.synth_params import load_params

    if a.requests < 1 or a.tokens_per_request < 1:
        raise MoesimError("--requests and --tokens-per-request must be >= 1")
    rng = np.random.default_rng(a.seed)
    params = load_params(a.params)
    if a.kind == "fitted":
        tr = sample_trace(params, a.requests, a.tokens_per_request, rng, task=a.task, phase=a.phase)
    else:
        tr = sample_baseline(params, a.kind, a.requests, a.tokens_per_request, rng, zipf_a=a.zipf_a,
                             task=a.task or "synthetic", phase=a.phase)
    write_trace(tr, a.output)
    print(f"wrote {a.output}: {a.requests} requests, {tr.num_tokens} tokens ({a.kind})")
    return 0


def main(argv: list[str]) -> int:
    parser = _build_parser()
    a = parser.parse_args(argv)
    try:
        from traces.capture_cli import cmd_capture

        return {"import": _cmd_import, "validate": _cmd_validate, "stats": _cmd_stats,
                "fit": _cmd_fit, "derive": _cmd_derive, "synth": _cmd_synth, "capture": cmd_capture}[a.cmd](a)
    except (OSError, UnicodeError) as exc:  # unreadable files, permissions: one line, no traceback
        raise TraceFormatError(f"{getattr(exc, 'filename', '') or ''} {exc}".strip()) from None
