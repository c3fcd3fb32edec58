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


def check_keys(cfg: Any, config_name: str, prefix: str = "") -> None:
    """Keys a schema does not have (Hydra lets '+key=...' add them) are an error."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind):
        extra = sorted(set(cfg.keys()) - {f.name for f in dataclasses.fields(kind)})
        if extra:
            raise ConfigError(f"unknown key {prefix + str(extra[0])!r}: the {config_name} config has "
                              f"no such key (--help lists the keys)")
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_keys(child, config_name, f"{prefix}{key}.")


def check_missing(cfg: Any, prog: str) -> None:
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} has no value; give {key}={_MISSING_HINTS.get(key, '...')}"
                          + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))


def hydra_error_line(exc: BaseException) -> str:
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
        moved = RENAMED_KEYS.get(str(full_key))
        if moved:
            return f"unknown key {full_key!r}: it is {moved!r} since the keys were renamed"
        return (f"unknown key {full_key!r} (--help lists the keys; '+{full_key}=...' adds one "
                f"only where a config allows it)")
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
