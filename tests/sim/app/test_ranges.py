"""Every numeric key of every app's schema has its range declared (sim/world/ranges.py, beside the
dataclass), and a value outside it, NaN included, is refused in one line naming the user's key
and the range; every shipped config lies inside."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
from omegaconf import OmegaConf

from sim.app.schemas.registry import APPS
from sim.common.errors import ConfigError
from sim.world.ranges import Range, check_ranges, check_value, numeric_fields, range_of


def _keys() -> list[tuple[str, str, type, str]]:
    """Each numeric field once (a node shared by several apps, e.g. ``model``, is tested in the
    first app that has it; a field's range belongs to its class)."""
    seen, out = set(), []
    for app, schema in APPS.items():
        for key, cls, name in numeric_fields(schema):
            if (cls, name) not in seen:
                seen.add((cls, name))
                out.append((app, key, cls, name))
    return out


KEYS = _keys()


def _structured(app: str, key: str):
    """The app's schema as a config node, with the Optional nodes on ``key``'s path filled."""
    import typing

    cfg = OmegaConf.structured(APPS[app])
    node, cls = cfg, APPS[app]
    for part in key.split(".")[:-1]:
        listed = part.endswith("[0]")
        part = part.removesuffix("[0]")
        t = typing.get_type_hints(cls)[part]
        inner = [a for a in typing.get_args(t) if a is not type(None)] or [t]
        cls = inner[0]
        if listed:  # a list of nodes (cluster.faults): one element, valid but for the key tested
            node[part] = [_valid(cls)]
            node = node[part][0]
            continue
        if node[part] is None:
            node[part] = cls()
        node = node[part]
    return cfg


def _valid(cls: type):
    """An instance of ``cls`` whose every ranged field is inside its range (defaults, else lo)."""
    obj = cls()
    for f in dataclasses.fields(cls):
        rng = range_of(cls, f.name)
        v = getattr(obj, f.name)
        if rng is not None and isinstance(v, int | float) and not rng.ok(float(v)):
            setattr(obj, f.name, type(v)(rng.lo + (1 if rng.lo_open else 0)))
    return obj


def _outside(rng: Range, is_int: bool) -> list[float]:
    """Values the range must refuse: NaN and inf (floats), and one past each finite bound."""
    bad = [] if is_int else [math.nan, -math.inf] + ([] if rng.inf_ok else [math.inf])
    if rng.lo > -math.inf:
        bad.append(rng.lo if rng.lo_open else rng.lo - 1)
    if rng.hi < math.inf and not (is_int and rng.hi >= 2**32 - 1):
        bad.append(rng.hi if rng.hi_open else rng.hi + (1 if is_int else 0.5))
    return [b for b in bad if b not in rng.also]


@pytest.mark.parametrize("app,key,cls,name", KEYS, ids=[f"{a}:{k}" for a, k, _, _ in KEYS])
def test_every_numeric_key_has_a_range_and_refuses_outside_it(app, key, cls, name):
    import typing

    rng = range_of(cls, name)
    assert rng is not None, f"{app}: {key} ({cls.__name__}.{name}) has no declared range"
    t = typing.get_type_hints(cls)[name]
    is_int = int in (t, *typing.get_args(t)) or "int" in str(t)
    is_list = typing.get_origin(t) is list or "list[" in str(t)
    bad = _outside(rng, is_int)
    assert bad, f"{key}: the range {rng} refuses nothing"
    for v in bad:
        cfg = _structured(app, key)
        value = int(v) if is_int and math.isfinite(v) else v
        OmegaConf.update(cfg, key, [value] if is_list else value, force_add=False)
        with pytest.raises(ConfigError) as e:
            check_ranges(cfg)
        msg = str(e.value)
        assert "\n" not in msg and key.split(".")[-1] in msg and "expected" in msg, msg
        assert msg.startswith(key + ("[0]=" if is_list else "=")), msg


def test_the_defaults_and_every_shipped_config_are_inside_their_ranges():
    from hydra import compose, initialize_config_module

    from sim.app.schemas.registry import register_app_schemas

    register_app_schemas()
    conf = os.path.join(os.path.dirname(__file__), "..", "..", "..", "conf")
    with initialize_config_module("conf", version_base="1.3"):
        for app in APPS:
            check_ranges(compose(app, []))
        for group in ("model", "hardware", "cluster", "experiment", "workload", "engine"):
            for f in sorted(os.listdir(os.path.join(conf, group))):
                if f.endswith(".yaml"):
                    check_ranges(compose("sim", [f"{group}={f[:-5]}"]))


def test_a_fault_without_time_names_its_list_index():
    from sim.world.config import FaultConfig, SimConfig

    cfg = SimConfig()
    cfg.cluster.faults = [FaultConfig(time_s=1.0, gpu=0), FaultConfig(gpu=1)]
    with pytest.raises(ConfigError, match=r"^cluster\.faults\[1\]\.time_s=-1\.0; expected"):
        check_ranges(cfg)
    cfg.cluster.faults[1].time_s = 2.0
    cfg.cluster.faults[1].recovery_s = math.inf  # never back: allowed
    check_ranges(cfg)


def test_range_edges():
    frac = Range(lo=0, hi=1, lo_open=True)
    assert frac.ok(1.0) and frac.ok(1e-9) and not frac.ok(0.0) and not frac.ok(math.nan)
    assert "(0, 1]" in frac.describe()
    gpu = Range(lo=-1)
    assert gpu.ok(-1) and not gpu.ok(-2)
    rec = Range(lo=0, inf_ok=True)
    assert rec.ok(math.inf) and not rec.ok(-math.inf) and not rec.ok(math.nan)
    with pytest.raises(ConfigError, match=r"^x\[2\]=nan \(not a number\); expected a number >= 0$"):
        check_value("x", [1.0, 2.0, math.nan], Range(lo=0))
    check_value("flag", True, Range(lo=5))  # booleans are not numbers here


def test_ranges_name_only_real_fields():
    from sim.world.ranges import ranges

    @dataclasses.dataclass
    class C:
        a: int = 1

    with pytest.raises(TypeError, match="no such field"):
        ranges(b=Range())(C)
