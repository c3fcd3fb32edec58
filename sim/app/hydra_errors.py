"""The one-line errors of the Hydra apps (:mod:`sim.app.hydra_app`): checks of the command line and of
the composed config, and Hydra's / OmegaConf's errors translated.

Each message names the key or override it is about: an unknown option or a bad override
(:func:`check_override_syntax`, before Hydra runs), a key the app's schema does not have
(:func:`check_keys`; a key renamed in issue 14 names its new place, :data:`RENAMED_KEYS`), a key
left ``???`` (:func:`check_missing`, with what to give), and :func:`hydra_error_line` for the
errors Hydra raises (unknown key, wrong type, unknown config, a list given as a scalar).
:class:`AppFailed` carries a task's message past Hydra's job runner.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from sim.common.errors import ConfigError, short_error

#: what to give for a key a YAML leaves ``???``
_MISSING_HINTS = {
    "trace.path": "FILE (a routing trace written by 'moesim trace import')",
    "checkpoint": "DIR (the checkpoint/ folder of a 'moesim predictor train' run)",
}


#: the flags Hydra's command line takes (anything else starting with "-" is an error)
_HYDRA_FLAGS = frozenset({
    "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p", "--run", "-r",
    "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"})


class AppFailed(BaseException):
    """Carries a task's one-line error past Hydra's job runner (which catches ``Exception``)."""


class AppCrashed(AppFailed):
    """An error no check foresaw (a library's ``ValueError``...), carried as one line: exit 1."""


#: top-level keys of the cache and placement apps before one vocabulary across commands (issue 14),
#: and what they are now (an unknown-key error names the new one)
RENAMED_KEYS = {
    "num_gpus": "cluster.expert_parallel",
    "capacity_fracs": "cluster.expert_budget_fractions",
    "policies": "policy.caches (moesim cache) or policy.placements (moesim placement)",
    "prefetch": "policy.prefetch",
    "prefetch_kwargs": "policy.prefetch_args",
    "reroute": "policy.reroute",
    "policy_kwargs": "policy.placement_args",
}


_SCI_INT = re.compile(r"^[+-]?\d+(\.\d*)?[eE]\+?\d+$")


def normalise_overrides(argv: list[str]) -> list[str]:
    """The command line as Hydra should read it: a number written ``1e12`` that is a whole number
    becomes ``1000000000000`` (so integer keys take it; a float key takes an int too); a key
    inside a policy's argument dict (``policy.prefetch_args.period=0``) or the demo's ``runs``
    is set whether or not the dict already has it (``++``), so no ``+`` is needed."""
    out = [a for a in argv if a in ("-m", "--multirun")]  # Hydra reads flags before overrides
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            out.append(arg)
            continue
        if _SCI_INT.match(value.strip()):
            try:
                f = float(value)
                if f.is_integer() and abs(f) < 2**63:
                    value = str(int(f))
            except ValueError:
                pass
        parts = key.lstrip("+~").split(".")
        if (not key.startswith(("+", "~")) and len(parts) > 1
                and (any(p.endswith("_args") for p in parts[:-1]) or parts[0] == "runs")):
            key = "++" + key
        out.append(f"{key}={value}")
    return out


def known_keys(config_name: str) -> set[str]:
    """The dotted keys of one app's schema (every field, nested nodes walked)."""
    from sim.app.schemas.registry import APPS

    return set(_schema_keys(APPS[config_name])) if config_name in APPS else set()


def _schema_keys(cls: type, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        inner = [a for a in typing.get_args(t) if a is not type(None)]
        base = inner[0] if typing.get_origin(t) is typing.Union and len(inner) == 1 else t
        out.append(prefix + f.name)
        if isinstance(base, type) and dataclasses.is_dataclass(base):
            out.extend(_schema_keys(base, f"{prefix}{f.name}."))
    return out


def _number_variants(key: str) -> list[str]:
    """The singular and plural spellings of a key's last part (``policy.cache`` <->
    ``policy.caches``, ``workload.rate_rps`` <-> ``workload.rates_rps``)."""
    head, _, last = key.rpartition(".")
    first, us, rest = last.partition("_")
    cands = {last + "s", last[:-1] if last.endswith("s") else last,
             first + "s" + us + rest, (first[:-1] if first.endswith("s") else first) + us + rest}
    cands.discard(last)
    return [f"{head}.{c}" if head else c for c in sorted(cands)]


def unknown_key_line(key: str, config_name: str) -> str:
    """One line for a key ``config_name``'s schema lacks, naming the key the user meant where
    there is one: a renamed key, the singular/plural of one of this app's keys, or a key of
    another command."""
    from sim.app.schemas.registry import APPS

    app = _APP_PROGS.get(config_name, config_name)
    moved = RENAMED_KEYS.get(key)
    if moved:
        return f"unknown key {key!r}: it is {moved!r} since the keys were renamed"
    mine = known_keys(config_name)
    for cand in _number_variants(key):
        if cand in mine:
            return (f"unknown key {key!r}: {app} takes {cand!r} "
                    + ("(a list: '" + cand + "=[...]')" if cand.endswith("s") and not key.endswith("s")
                       else "(one value)"))
    elsewhere = sorted(_APP_PROGS.get(n, n) for n in APPS if n != config_name and key in known_keys(n))
    if elsewhere:
        return (f"unknown key {key!r}: {app} has no such key; it is a key of "
                f"{', '.join(elsewhere[:3])} (--help lists {app}'s keys)")
    return f"unknown key {key!r}: the {app} config has no such key (--help lists the keys)"


#: config name -> the command that runs it
_APP_PROGS = {
    "sim": "moesim sim", "demo": "moesim demo", "cache": "moesim cache",
    "placement": "moesim placement", "realrun_replay": "moesim realrun replay",
    "realrun_calibrate": "moesim realrun calibrate", "realrun_validate": "moesim realrun validate",
    "predictor_train": "moesim predictor train", "predictor_eval": "moesim predictor eval",
    "kernels_bench": "moesim kernels bench", "experiment_emoe": "moesim experiment emoe",
    "experiment_huang": "moesim experiment huang", "experiment_accuracy": "moesim experiment accuracy",
    "experiment_prefetch": "moesim experiment prefetch",
}


def check_override_syntax(argv: list[str], prog: str) -> None:
    """Each ``key=value`` must parse under Hydra's override grammar; name the one that does not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") and arg.split("=", 1)[0] not in _HYDRA_FLAGS:
            print(f"{prog}: error: unknown option {arg!r} (options: --help, -m, --cfg job, "
                  f"--hydra-help; settings are key=value)", file=sys.stderr)
            raise SystemExit(2)
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_override(arg)
        except HydraException as exc:
            print(f"{prog}: error: bad override {arg!r}: {short_error(exc)} (quote lists and "
                  f"values with spaces, e.g. 'key=[a,b]')", file=sys.stderr)
            raise SystemExit(2) from None


def check_launcher(argv: list[str], prog: str) -> None:
    """The launcher's numbers that would fail only after the sweep folder is made."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key == "hydra.launcher.n_jobs":
            try:
                n = int(value)
            except ValueError:
                n = None
            if n is None or n == 0:
                print(f"{prog}: error: hydra.launcher.n_jobs={value}; expected N >= 1 jobs at once "
                      f"(or -N: all CPUs but N-1, joblib's rule)", file=sys.stderr)
                raise SystemExit(2)


def check_keys(cfg: Any, config_name: str, prefix: str = "") -> None:
    """Keys a schema does not have (Hydra lets '+key=...' add them) are an error."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind):
        extra = sorted(set(cfg.keys()) - {f.name for f in dataclasses.fields(kind)})
        if extra:
            raise ConfigError(unknown_key_line(prefix + str(extra[0]), config_name))
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_keys(child, config_name, f"{prefix}{key}.")


def _in_list(key: str, text: str) -> str:
    """``tme_s`` inside ``cluster.faults=[{tme_s: 1}]`` -> ``cluster.faults[0].tme_s`` (Hydra
    names only the element's key)."""
    found = re.search(r"Could not override '([^']+)'", text)
    if "." in key or not found or found[1] == key or found[1].endswith("." + key):
        return key
    listed = re.search(r"\+?([\w.]+)=(\[.*\])", text)
    if listed:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            value = OverridesParser.create().parse_override(f"{listed[1]}={listed[2]}").value()
        except Exception:  # noqa: BLE001 - only for the message
            value = None
        if isinstance(value, list):
            for i, e in enumerate(value):
                if isinstance(e, dict) and key in e:
                    return f"{found[1]}[{i}].{key}"
    return f"{found[1]}.{key}"


def check_missing(cfg: Any, prog: str) -> None:
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} has no value; give {key}={_MISSING_HINTS.get(key, '...')}"
                          + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))


def hydra_error_line(exc: BaseException, config_name: str = "") -> str:
    """One line for a Hydra / OmegaConf error, naming the key or override it is about."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = exc.__cause__
    text = str(exc).strip()
    if isinstance(exc, MissingConfigException):
        lines = text.splitlines()
        first = lines[0].split(": ", 1)[-1] if lines else str(exc)
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", first)
        if found:
            first = f"{found[1]}={found[2]}: no config conf/{found[1]}/{found[2]}.yaml"
        opts = [ln.strip() for ln in lines if ln.startswith("\t") and "provider=" not in ln]
        return first + (f"; available: {', '.join(opts)}" if opts else "")
    full_key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) or (
            cause is None and isinstance(exc, ConfigAttributeError | ConfigKeyError)):
        return unknown_key_line(_in_list(str(full_key), text), config_name)
    override = text.split("override ", 1)[1].splitlines()[0] if "override " in text else None
    if isinstance(cause, ValidationError) or isinstance(exc, ValidationError):
        detail = short_error(cause or exc)
        if "is not a ListConfig" in detail and override:
            key, _, value = override.partition("=")
            return f"{override}: {key} is a list; write '{key}=[{value}]'"
        where = override or full_key
        return f"{where}: {detail}" if where else detail
    if cause is not None:
        return f"{short_error(exc)}: {short_error(cause)}"
    return short_error(exc)
