"""Kill rate of the mutation tests, per module: how many of the mutants mutmut made of the decision
code the test suite caught.

Usage (from the repository root, with the venv; mutmut is configured in pyproject.toml)::

    python benchmarks/mutation_score.py                       # the figures of the last runs
    python benchmarks/mutation_score.py --run sim/serving/batching.py # run mutmut on one module, then print
    python benchmarks/mutation_score.py --run                 # every decision module (an hour+)

``--run`` runs ``nice -n 10 mutmut run "<module>.*"`` for each module named (a file, or a folder
such as ``sim/policies``); mutmut keeps its results in ``mutants/`` between runs, so modules can be
run one at a time and the figures read together. Mutants listed (by name, in backquotes) in
``tests/mutation_equivalents.md`` were reviewed as equivalent: they change no observable
behaviour, so they are left out of the rate. The kill rate is

    killed / (checked - equivalent)

where killed counts a failing test, a timeout or a crash, and checked is every mutant with a
result (survivors and mutants no test reaches included). Exit status 1 when a module is under
``--min`` (default 0.9). Not run in CI: mutation runs take minutes per module.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the decision modules (pyproject.toml [tool.mutmut] only_mutate)
MODULES = ["sim/policies", "sim/serving/batching.py", "sim/serving/offload.py", "sim/serving/step_arrays.py",
           "sim/serving/static_arrays.py",
           "sim/replay/cache.py",
           "sim/world/facts.py", "traces/format.py", "kernels/align.py"]
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.md"
KILLED_CODES = {1, 3, 24, -24, 36, 152, 255, -9, -11}  # a test failed, a timeout, a crash
SURVIVED_CODES = {0, 5, 33}  # tests passed, or no test reached the mutant


def equivalents(path: Path = EQUIVALENTS) -> set[str]:
    """Mutant names listed in the reviewed file (each in backquotes)."""
    if not path.exists():
        return set()
    return set(re.findall(r"`([\w.\u01c1]+__mutmut_\d+)`", path.read_text(encoding="utf-8")))


def module_glob(module: str) -> str:
    """mutmut's name pattern for a file or folder: sim/serving/batching.py -> sim.serving.batching.*"""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def results(root: Path = ROOT) -> dict[str, dict[str, int | None]]:
    """{source file: {mutant name: exit code or None}} from mutants/**/*.py.meta."""
    out: dict[str, dict[str, int | None]] = {}
    base = root / "mutants"
    for meta in sorted(base.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        if codes:
            out[str(meta.relative_to(base))[: -len(".meta")]] = codes
    return out


def score(codes: dict[str, int | None], equiv: set[str]) -> dict[str, object]:
    checked = {k: v for k, v in codes.items() if v is not None}
    eq = [k for k in checked if k in equiv]
    killed = [k for k, v in checked.items() if v in KILLED_CODES and k not in equiv]
    survived = sorted(k for k, v in checked.items() if v not in KILLED_CODES and k not in equiv)
    denom = len(checked) - len(eq)
    return {"mutants": len(codes), "checked": len(checked), "killed": len(killed),
            "survived": len(survived), "equivalent": len(eq),
            "rate": len(killed) / denom if denom else None, "survivors": survived}


def report(modules: list[str], equiv: set[str], show_survivors: bool) -> list[tuple[str, dict]]:
    res = results()
    rows = []
    for mod in modules:
        files = {f: c for f, c in res.items() if f == mod or f.startswith(mod.rstrip("/") + "/")}
        merged: dict[str, int | None] = {}
        for c in files.values():
            merged.update(c)
        rows.append((mod, score(merged, equiv)))
    allc: dict[str, int | None] = {}
    for mod in modules:
        for f, c in res.items():
            if f == mod or f.startswith(mod.rstrip("/") + "/"):
                allc.update(c)
    rows.append(("all of the above", score(allc, equiv)))
    print(f"{'module':<22} {'mutants':>7} {'checked':>7} {'killed':>7} {'survived':>8} {'equiv':>6} "
          f"{'kill rate':>9}")
    for mod, s in rows:
        rate = "-" if s["rate"] is None else f"{s['rate']:.1%}"
        print(f"{mod:<22} {s['mutants']:>7} {s['checked']:>7} {s['killed']:>7} {s['survived']:>8} "
              f"{s['equivalent']:>6} {rate:>9}")
    if show_survivors:
        for _mod, s in rows[:-1]:
            for name in s["survivors"]:
                print(f"survived: {name}   (mutmut show {name})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"files or folders (default: {' '.join(MODULES)})")
    ap.add_argument("--run", action="store_true", help="run mutmut on each module first")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    ap.add_argument("--min", type=float, default=0.9, help="exit 1 under this kill rate")
    args = ap.parse_args(argv)
    modules = args.modules or MODULES
    if args.run:
        mutmut = Path(sys.executable).with_name("mutmut")
        for mod in modules:
            print(f"$ nice -n 10 mutmut run '{module_glob(mod)}'", flush=True)
            subprocess.run(["nice", "-n", "10", str(mutmut), "run", module_glob(mod)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, check=False)
    rows = report(modules, equivalents(), args.survivors)
    low = [m for m, s in rows[:-1] if s["rate"] is not None and s["rate"] < args.min]
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
