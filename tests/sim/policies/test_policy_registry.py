"""The registries: typed policy arguments (one-line errors) and declared capabilities."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.common.errors import ConfigError
from sim.policies import CACHE, PLACEMENT, PREFETCH, ROUTER, SCHEDULER
from sim.policies.base import CachePolicy, PrefetchPolicy

DRIVER = {"cache": {"capacity": 2, "num_keys": 8},
          "prefetch": {"num_layers": 2, "num_experts": 4, "top_k": 1},
          "placement": {"num_gpus": 2}, "scheduler": {}, "router": {}}
REGISTRIES = [CACHE, PREFETCH, PLACEMENT, SCHEDULER, ROUTER]
EVERY = [(r, n) for r in REGISTRIES for n in r.names()]


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------
def test_unknown_argument_is_one_line_naming_what_is_accepted():
    with pytest.raises(ConfigError) as e:
        CACHE.make("lru", capacity=2, num_keys=4, capactiy=9)
    assert str(e.value) == "cache policy 'lru' has no argument 'capactiy'; it accepts: (none)"
    with pytest.raises(ConfigError) as e:
        PREFETCH.make("emoe_a", num_layers=1, num_experts=4, top_k=1, windw=3)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("prefetch policy 'emoe_a' has no argument 'windw'; it accepts: ")
    for name in ("period: int = 40", "window: int = 40", "set_size: int | None = None"):
        assert name in msg


@pytest.mark.parametrize("registry,name,kw,expected", [
    (PREFETCH, "emoe_a", {"period": "x"}, "prefetch policy 'emoe_a' argument period='x': expected int"),
    (PREFETCH, "emoe_a", {"period": True}, "expected int"),
    (PREFETCH, "emoe_a", {"period": 2.5}, "expected int"),
    (PREFETCH, "emoe_l", {"learn_online": 1}, "expected bool"),
    (PREFETCH, "emoe_task", {"sensitivity": [1, 0]}, "expected dict[str, Any] | None"),
    (SCHEDULER, "emoe", {"per_token_s": "fast"}, "expected float"),
    (PLACEMENT, "rebalance", {"inner": 3}, "expected str"),
])
def test_mistyped_argument_is_one_line(registry, name, kw, expected):
    with pytest.raises(ConfigError, match=expected.replace("|", r"\|").replace("[", r"\[")) as e:
        registry.make(name, **DRIVER[registry.kind], **kw)
    assert "\n" not in str(e.value)


def test_typed_arguments_reach_the_policy():
    p = PREFETCH.make("emoe_a", num_layers=1, num_experts=4, top_k=1, period=2, set_size=None)
    assert (p.cfg.period, p.cfg.window, p.cfg.set_size) == (2, 40, None)
    assert p.period == 2
    s = SCHEDULER.make("emoe", load_latency_s=1, per_token_s=0.1)  # an int for a float is widened
    assert isinstance(s.cfg.load_latency_s, float) and s.dE == 1.0
    t = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, sensitivity={"x": [1, 0]})
    assert t.sensitivity("x").tolist() == [1.0, 0.0]
    r = PLACEMENT.make("rebalance", num_gpus=2, inner="eplb", inner_kwargs={"num_redundant": 2})
    assert r.inner.name == "eplb" and r.inner.num_redundant == 2


def test_inner_policy_arguments_are_checked_too():
    with pytest.raises(ConfigError, match="placement policy 'greedy' has no argument 'weight'"):
        PLACEMENT.make("rebalance", num_gpus=2, inner_kwargs={"weight": 1.0})


def test_mapping_arguments_from_hydra_are_accepted():
    from omegaconf import OmegaConf

    sens = OmegaConf.create({"x": [1, 0]})
    t = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, sensitivity=sens)
    assert t.sensitivity("x").tolist() == [1.0, 0.0]


@pytest.mark.parametrize("registry,name", EVERY, ids=[f"{r.kind}-{n}" for r, n in EVERY])
def test_every_policy_declares_its_arguments(registry, name):
    cls = registry.get(name)
    assert dataclasses.is_dataclass(cls.Config)
    for klass in cls.__mro__:
        if klass.__module__.startswith("sim.policies") and "__init__" in vars(klass):
            kinds = [p.kind for p in inspect.signature(klass.__init__).parameters.values()]
            assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{klass.__name__} takes **kwargs"
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    accepts = registry.accepts(name)
    assert all(f in accepts for f in fields)
    if not fields:
        assert accepts == "(none)"
    if name not in ("emoe_learned", "learned_next", "learned_topk"):  # need a trained checkpoint
        policy = registry.make(name, **DRIVER[registry.kind])
        assert policy.cfg == cls.Config()
        assert policy.name == name


def test_registry_get_names_register_still_work():
    assert "lru" in CACHE.names() and CACHE.get("lru").name == "lru"
    with pytest.raises(ConfigError, match="unknown router policy 'nope'; known: least_loaded, round_robin"):
        ROUTER.get("nope")


# ------------------------------------------------------------------------------------------------
# declared capabilities
# ------------------------------------------------------------------------------------------------
def _overrides(cls: type, base: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(base, method)


@pytest.mark.parametrize("name", CACHE.names())
def test_cache_flags_match_what_the_class_overrides(name):
    cls = CACHE.get(name)
    assert cls.requires_future == _overrides(cls, CachePolicy, "set_future")
    assert cls.uses_prediction == _overrides(cls, CachePolicy, "set_predicted")
    assert cls.uses_requests == _overrides(cls, CachePolicy, "begin_request")


@pytest.mark.parametrize("name", PREFETCH.names())
def test_prefetch_flags_match_what_the_class_overrides(name):
    cls = PREFETCH.get(name)
    assert cls.requires_future == _overrides(cls, PrefetchPolicy, "set_trace")
    assert cls.plans_requests == _overrides(cls, PrefetchPolicy, "on_request")
    assert cls.predicts_next_layer == _overrides(cls, PrefetchPolicy, "next_layer")
    assert cls.observes == _overrides(cls, PrefetchPolicy, "observe")


def test_base_hooks_are_no_ops_a_driver_may_call():
    c = CACHE.make("lru", capacity=2, num_keys=4)
    c.begin_request(0)
    c.set_predicted([1])
    c.set_future([np.array([1])])
    assert c.access(0, [1]) == ([1], [])
    p = PREFETCH.make("none", num_layers=2, num_experts=4, top_k=1)
    p.set_trace(None)
    assert p.on_request(None) == {} and len(p.next_layer(None, 0, np.array([1]))) == 0


def _run(name: str, cap: int, steps: list[list[int]], actives: list[frozenset[int]] | None):
    c = CACHE.make(name, capacity=cap, num_keys=10)
    if c.requires_future:
        c.set_future([np.array(s) for s in steps])
    return [c.access(i, s, None if actives is None else actives[i]) for i, s in enumerate(steps)]


steps_st = st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True), max_size=25)


@pytest.mark.parametrize("name", [n for n in CACHE.names() if not CACHE.get(n).uses_active])
@settings(max_examples=40, deadline=None)
@given(steps=steps_st, cap=st.integers(0, 5), data=st.data())
def test_policies_not_declaring_uses_active_ignore_it(name, steps, cap, data):
    actives = [frozenset(data.draw(st.sets(st.integers(0, 9)))) for _ in steps]
    assert _run(name, cap, steps, actives) == _run(name, cap, steps, None)


@pytest.mark.parametrize("name", [n for n in CACHE.names() if CACHE.get(n).uses_active])
def test_policies_declaring_uses_active_use_it(name):
    rng = np.random.default_rng(0)
    for _ in range(200):
        steps = [rng.choice(10, 2, replace=False).tolist() for _ in range(20)]
        actives = [frozenset(rng.choice(10, 4, replace=False).tolist()) for _ in steps]
        if _run(name, 3, steps, actives) != _run(name, 3, steps, None):
            return
    raise AssertionError(f"{name} declares uses_active but never depends on the active set")
