"""Every ``moesim ...`` command line the documentation quotes is checked against the real CLI, so
documented keys cannot drift from real ones: README.md (code blocks and inline code), the module
docstrings under sim/ realrun/ kernels/ analysis/ traces/, and the comments of conf/*.yaml.

Hydra apps run with ``--cfg job`` (composes the config: an unknown key, a wrong type or an unknown
config group fails; nothing runs); file tools (``trace``, ``report``) go through their argparse
parser. Placeholders (FILE, DIR, ds.parquet, NAME|FILE ...) are substituted from ``PLACEHOLDERS``,
optional ``[...]`` parts are kept, ``a|b`` alternatives take the first, a ``-m`` sweep takes each
key's first value. ``UNCHECKED`` lists the quoted lines this cannot check, with the reason.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from sim.app.cli import main as moesim

ROOT = Path(__file__).resolve().parents[1]

#: placeholder (a whole argument, or a key=value's value) -> what the check uses
PLACEHOLDERS = {
    "FILE": "{trace}", "ds.parquet": "{trace}", "ROUTING.parquet": "{trace}",
    "TRACE.parquet": "{trace}", "TRACE": "{trace}", "mixtral.parquet": "{trace}",
    "SRC": "{trace}", "DIR": "{tmp}", "RUN/checkpoint": "{tmp}", "RUN_DIR/profile.csv": "{tmp}/p.csv",
    "OUT.parquet": "{tmp}/out.parquet", "OUT": "{tmp}/out.parquet", "PARAMS.json": "{tmp}/p.json",
    "FORMAT": "moe-beyond-csv", "NAME": "deepseek-v2-lite", "N": "4", "T": "8", "S": "0", "A": "1.1",
    "KEY": "policy", "METRIC": "hit_rate",
}
#: command lines (after normalisation, placeholders still in) that are quoted but not checked
UNCHECKED: dict[str, str] = {}
HYDRA_APPS = {"sim", "cache", "placement", "demo", "predictor", "realrun", "kernels",
              "experiment"}


# ------------------------------------------------------------------------------------------------
# finding the quoted commands
# ------------------------------------------------------------------------------------------------
def _commands_in_text(text: str, spans: str) -> list[str]:
    """Lines that start with ``moesim`` plus inline code spans (``spans``: '`' or '``')."""
    out = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("moesim ")]
    q = re.escape(spans)
    out += [" ".join(m.split()) for m in re.findall(rf"(?<!`){q}(moesim [^`]+?){q}(?!`)", text)]
    return out


def _readme() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    found = [c for b in blocks for c in _commands_in_text(b, "\0")]
    found += _commands_in_text(re.sub(r"```\n.*?```", "", text, flags=re.S), "`")
    return [("README.md", c) for c in found]


def _docstrings() -> list[tuple[str, str]]:
    found = []
    for pkg in ("sim", "realrun", "kernels", "analysis", "traces"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text()), clean=True) or ""
            rel = str(path.relative_to(ROOT))
            found += [(rel, c) for c in _commands_in_text(doc, "``")]
    return found


def _yaml_comments() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "conf").glob("*.yaml")):
        for ln in path.read_text().splitlines():
            if ln.lstrip().startswith("#") and "moesim " in ln:
                cmd = re.split(r"\s{2,}|\s->", ln[ln.index("moesim "):])[0].rstrip(":")
                found.append((str(path.relative_to(ROOT)), cmd))
    return found


def documented_commands() -> list[tuple[str, str]]:
    from sim.app.cli import SUBCOMMANDS

    seen: dict[str, str] = {}
    for where, cmd in _readme() + _docstrings() + _yaml_comments():
        cmd = cmd.split(" # ")[0].strip()
        words = cmd.split()
        # not prose ("moesim is ...") or a title ("moesim realrun replay: replay a ...")
        if words[1] in SUBCOMMANDS and not any(w.endswith(":") for w in words[:3]):
            seen.setdefault(cmd, where)
    return [(where, cmd) for cmd, where in seen.items()]


# ------------------------------------------------------------------------------------------------
# turning a quoted line into arguments
# ------------------------------------------------------------------------------------------------
def _unbracket(cmd: str) -> str:
    """Drop the brackets of optional parts ``[x=1]`` (not of list values such as ``k=[a,b]``)."""
    out, i = [], 0
    while i < len(cmd):
        if cmd[i] == "[" and (i == 0 or cmd[i - 1] == " "):
            depth, j = 0, i
            while j < len(cmd):
                depth += {"[": 1, "]": -1}.get(cmd[j], 0)
                if depth == 0:
                    break
                j += 1
            out.append(_unbracket(cmd[i + 1:j]))
            i = j + 1
        else:
            out.append(cmd[i])
            i += 1
    return "".join(out)


def to_argv(cmd: str, subst: dict[str, str]) -> list[str]:
    cmd = re.sub(r"\$\([^)]*\)", "SRC", cmd)  # $(ls ... | sort -V): the files it lists
    cmd = cmd.replace("key=value ...", "").replace("{train,eval}", "train")
    args = shlex.split(_unbracket(cmd), comments=True)[1:]
    sweep = "-m" in args
    out = []
    for a in args:
        if a in ("...", "-m") or a.endswith("..."):
            a = a[:-3] if a.endswith("...") and len(a) > 3 else None
        if a is None:
            continue
        key, sep, value = a.partition("=")
        if not sep:
            key, value = "", a
        if "|" in value:
            value = value.split("|")[0]
        if sweep and "," in value and "[" not in value:
            value = value.split(",")[0]
        value = subst.get(value, value)
        out.append(f"{key}={value}" if sep else value)
    return out


@pytest.fixture(scope="module")
def subst(tmp_path_factory):
    import numpy as np

    from traces.format import RoutingTrace, TraceMeta, make_tokens, write_trace

    tmp = tmp_path_factory.mktemp("docs")
    trace = tmp / "t.parquet"
    ex = np.tile(np.array([[0, 1], [2, 3]], dtype=np.int16), (8, 1, 1))  # (8, 2, 2)
    write_trace(RoutingTrace(ex, None, make_tokens(np.arange(8) // 4, np.arange(8) % 4, "prefill",
                                                   "x", ["a"] * 8), TraceMeta("DeepSeek-V2-Lite", 2, 4, 2)),
                trace)
    return {k: v.format(trace=trace, tmp=tmp) for k, v in PLACEHOLDERS.items()}


COMMANDS = documented_commands()


def test_the_docs_quote_commands():
    cmds = [c for _, c in COMMANDS]
    assert len(cmds) >= 30
    for app in ("sim", "cache", "placement", "predictor", "realrun", "kernels", "report", "trace",
                "demo"):
        assert any(c.startswith(f"moesim {app}") for c in cmds), app


@pytest.mark.parametrize("where,cmd", COMMANDS, ids=[c[:60] for _, c in COMMANDS])
def test_documented_command_is_valid(where, cmd, subst, capsys, monkeypatch, tmp_path):
    if cmd in UNCHECKED:
        pytest.skip(UNCHECKED[cmd])
    argv = to_argv(cmd, subst)
    monkeypatch.chdir(tmp_path)
    app = argv[0] if argv else ""
    if app in HYDRA_APPS:
        groups = ("predictor", "realrun", "kernels", "experiment")
        if app in groups and len(argv) == 1:
            argv.append("--help")  # the group's usage: its subcommands
        elif app not in groups or len(argv) > 1:
            argv.append("--cfg=job")
        try:
            rc = moesim(argv)
        except SystemExit as exc:
            rc = exc.code
    else:
        rc = _parse_only(app, argv[1:])
    err = capsys.readouterr().err
    assert rc == 0, f"{where}: {cmd!r} -> moesim {' '.join(argv)}: {err.strip()}"
    assert list(tmp_path.iterdir()) == [], f"{where}: {cmd!r} wrote files"


def _parse_only(app: str, args: list[str]) -> int:
    """The argparse file tools: the arguments must parse (nothing is read or written)."""
    if app == "trace":
        from sim.app.trace_cmd import _build_parser

        parser = _build_parser()
    elif app == "report":
        from analysis.cli import _parser as parser_fn

        parser = parser_fn()
    else:
        raise AssertionError(f"moesim {app}: not a known command")
    if len(args) <= 1:  # "moesim trace" or "moesim trace stats" named in prose: its --help
        args = [*args, "--help"]
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_placeholder_handling():
    s = {"FILE": "/t.parquet", "NAME": "ds"}
    assert to_argv("moesim cache trace.path=FILE ['policy.caches=[lru,lifo]'] [model=NAME]", s) == \
        ["cache", "trace.path=/t.parquet", "policy.caches=[lru,lifo]", "model=ds"]
    assert to_argv("moesim sim -m policy.cache=lru,lifo x=1  # note", s) == \
        ["sim", "policy.cache=lru", "x=1"]
    assert to_argv("moesim predictor eval [split=test|val]", s) == ["predictor", "eval", "split=test"]
    assert to_argv("moesim report DIR [--hue KEY]", {"DIR": "d", "KEY": "k"}) == \
        ["report", "d", "--hue", "k"]
