"""``--help`` of every Hydra app: its usage (the app module's docstring), its keys with their
defaults and one-line descriptions (from the comment beside the key in ``conf/<app>.yaml`` or the
``#:`` comment in its schema), and only the config groups it accepts."""

from __future__ import annotations

import re
from typing import Any


def app_help(config_name: str, prog: str, doc: str) -> str:
    """The app's usage (its module docstring), its keys with their defaults, its config groups."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sim.app.schemas.registry import APPS

    with initialize_config_module("conf", version_base="1.3"):
        hcfg = compose(config_name, return_hydra_config=True)
        choices = {k: v for k, v in OmegaConf.to_container(hcfg.hydra.runtime.choices).items()
                   if not k.startswith("hydra/")}
        keys = _flat_keys(OmegaConf.to_container(compose(config_name), resolve=False))
    lines = [f"usage: {prog} [key=value ...] [-m] [--cfg job] [hydra.run.dir=DIR]", "",
             doc.strip(), "",
             f"Keys (values: conf/{config_name}.yaml; types: {APPS[config_name].__module__}."
             f"{APPS[config_name].__qualname__}; an unknown key or a wrong type is an error):", ""]
    docs = {**schema_docs(APPS[config_name]), **yaml_docs(config_name)}
    width = max((len(k) for k in keys), default=0)
    vwidth = min(max((len(v) for v in keys.values()), default=0), 28)
    for k, v in keys.items():
        doc = docs.get(k) or docs.get(k.split(".", 1)[0], "")
        lines.append(f"  {k:<{width}}  {v:<{vwidth}}  {doc}".rstrip())
    if choices:
        import importlib.resources

        lines += ["", "Config groups (group=NAME):"]
        root = importlib.resources.files("conf")
        for group, choice in choices.items():
            names = sorted(p.name[:-5] for p in root.joinpath(group).iterdir()
                           if p.name.endswith(".yaml"))
            lines.append(f"  {group:<12} {', '.join(names)} (default: {choice or 'none'})")
    lines += ["", "Hydra: key=value overrides; -m sweeps (key=a,b), in parallel with "
              "hydra/launcher=joblib (submitit_local, submitit_slurm, ray: conf/hydra/launcher); a "
              "sweep rerun with the same hydra.sweep.dir skips the runs that finished; --cfg job "
              "prints the composed config; --hydra-help for Hydra's own flags."]
    return "\n".join(lines)


def yaml_docs(config_name: str) -> dict[str, str]:
    """{dotted key: the comment at the end of its line in conf/<config_name>.yaml}."""
    import importlib.resources

    text = importlib.resources.files("conf").joinpath(f"{config_name}.yaml").read_text()
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        body = line.split(" #", 1)[0].rstrip()
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", body)
        if not m or line.lstrip().startswith(("#", "-")):
            continue
        indent = len(m[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m[2]])
        stack.append((indent, m[2]))
        if " #" in line:
            out[key] = line.split(" #", 1)[1].strip()
    return out


def schema_docs(schema: type, prefix: str = "") -> dict[str, str]:
    """{dotted key: the ``#:`` comment above the field} of a dataclass schema and its nested
    dataclasses (the one-line descriptions --help prints where the YAML has none)."""
    import dataclasses
    import inspect
    import typing

    out: dict[str, str] = {}
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return out
    for m in re.finditer(r"((?:^[ \t]*#:.*\n)+)^[ \t]*(\w+):", source, re.M):
        text = " ".join(ln.strip()[2:].strip() for ln in m[1].strip().splitlines())
        out[prefix + m[2]] = text
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints.get(f.name)
        kind = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
        if dataclasses.is_dataclass(kind):
            out.update(schema_docs(kind, f"{prefix}{f.name}."))
    return out


def _flat_keys(node: Any, prefix: str = "") -> dict[str, str]:
    """{"trace.path": "???", "policies": "[lru, lfu]", ...}: every key with its default."""
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat_keys(v, f"{prefix}{k}."))
        return out

    def show(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(show(x) for x in v) + "]"
        return "null" if v is None else "{}" if v == {} else str(v).lower() if isinstance(v, bool) \
            else str(v)

    return {prefix[:-1]: show(node)}


