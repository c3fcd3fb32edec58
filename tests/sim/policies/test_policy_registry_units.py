"""The registry machinery (sim/policies/_registry.py) on a registry of its own: registration, the
typed arguments (each type a Config field may have), the accepted-arguments line, the driver's
arguments kept apart from the user's."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.policies._registry import NoArgs, Registry, _coerce, _load_all, _type_name


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 3
    x: float = 0.5
    flag: bool = False
    label: str = "a"
    maybe: int | None = None
    table: dict[str, Any] | None = None
    items: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    hidden: int = dataclasses.field(default=7, init=False)


def _registry() -> tuple[Registry, type]:
    reg: Registry = Registry("toy", ("size",))

    @reg.register("thing")
    class Thing:
        Config = _Cfg

        def __init__(self, size: int, cfg: Any = None) -> None:
            self.size, self.cfg = size, cfg

    return reg, Thing


def test_register_names_the_class_and_refuses_a_second_class_under_a_name():
    reg, Thing = _registry()
    assert Thing.name == "thing" and reg.get("thing") is Thing
    assert reg.register("thing")(Thing) is Thing  # the same class again is fine
    with pytest.raises(ValueError, match="toy policy 'thing' registered twice"):
        reg.register("thing")(type("Other", (), {"Config": NoArgs}))
    with pytest.raises(TypeError, match="toy policy 'bad': Config must be a dataclass"):
        reg.register("bad")(type("Bad", (), {"Config": dict}))
    with pytest.raises(TypeError, match="Config must be a dataclass"):
        reg.register("none")(type("NoConfig", (), {}))
    assert "bad" not in reg._classes and "none" not in reg._classes


def test_unknown_name_lists_the_known_ones_sorted():
    reg, _ = _registry()
    reg.register("alpha")(type("A", (), {"Config": NoArgs}))
    with pytest.raises(ConfigError) as e:
        reg.get("zeta")
    assert str(e.value) == "unknown toy policy 'zeta'; known: alpha, thing"


def test_make_keeps_the_driver_arguments_apart_and_checks_the_users():
    reg, Thing = _registry()
    t = reg.make("thing", size=4, n=5, x=2, items=(3,), table={"k": 1}, maybe=None)
    assert isinstance(t, Thing) and t.size == 4
    assert (t.cfg.n, t.cfg.x, t.cfg.items, t.cfg.table, t.cfg.maybe) == (5, 2.0, (3,), {"k": 1}, None)
    assert isinstance(t.cfg.x, float)
    assert reg.make("thing", size=1).cfg == _Cfg()
    with pytest.raises(ConfigError, match="toy policy 'thing' has no argument 'size2'"):
        reg.make("thing", size=1, size2=2)
    with pytest.raises(ConfigError, match="has no argument 'hidden'"):  # init=False: not the user's
        reg.make("thing", size=1, hidden=1)


def test_accepts_lists_each_user_argument_with_its_default():
    reg, _ = _registry()
    assert reg.accepts("thing") == ("n: int = 3, x: float = 0.5, flag: bool = False, label: str = 'a', "
                                    "maybe: int | None = None, table: dict[str, Any] | None = None, "
                                    "items: list[int] = [1, 2]")
    reg.register("plain")(type("P", (), {"Config": NoArgs}))
    assert reg.accepts("plain") == "(none)"


def test_accepts_skips_a_derived_field_anywhere_and_marks_a_required_one():
    """A field the user cannot set (``init=False``) is left out wherever it stands, the fields
    after it still listed; a field without a default shows ``'?'``."""

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        size: int
        derived: int = dataclasses.field(default=0, init=False)
        rate: float = 0.25

    reg: Registry = Registry("toy")
    reg.register("req")(type("R", (), {"Config": Cfg}))
    assert reg.accepts("req") == "size: int = '?', rate: float = 0.25"


@pytest.mark.parametrize("value,tp,ok,out", [
    (3, int, True, 3), (np.int64(3), int, True, 3), (np.float32(0.5), float, True, 0.5),
    (np.bool_(True), int, False, np.bool_(True)), (True, int, False, True), (2.0, int, False, 2.0),
    ("3", int, False, "3"),
    (2, float, True, 2.0), (2.5, float, True, 2.5), (False, float, False, False),
    ("1", float, False, "1"),
    (True, bool, True, True), (1, bool, False, 1),
    ("s", str, True, "s"), (1, str, False, 1),
    (None, type(None), True, None), (0, type(None), False, 0),
    (None, int | None, True, None), (4, int | None, True, 4), ("4", int | None, False, "4"),
    (3, float | None, True, 3.0),
    ({"a": 1}, dict[str, Any], True, {"a": 1}), ([1], dict[str, Any], False, [1]),
    ([1], list[int], True, [1]), ((1,), Sequence[int], True, (1,)), ("ab", list[str], False, "ab"),
    ({"a": 1}, Mapping[str, int], True, {"a": 1}), (5, list[int], False, 5),
    (object(), Any, True, None), (1.5, complex, False, 1.5), (1j, complex, True, 1j),
    # another generic: checked against its class, whatever the items
    ({1, 2}, set[int], True, {1, 2}), (frozenset({1}), set[int], False, frozenset({1})),
    ([1], set[int], False, [1]), (frozenset({1}), frozenset[str], True, frozenset({1})),
])
def test_coerce_each_kind_of_type(value, tp, ok, out):
    got_ok, got = _coerce(value, tp)
    assert got_ok is ok
    if out is not None or value is None:
        assert got == out and type(got) is type(out)


def test_type_names():
    assert _type_name(int) == "int"
    assert _type_name(type(None)) == "None"
    assert _type_name(int | None) == "int | None"
    assert _type_name(dict[str, Any]) == "dict[str, Any]"
    assert _type_name(list[int]) == "list[int]"
    assert _type_name(set[str]) == "set[str]"
    assert _type_name(Any) == "Any"
    assert _type_name(TypeVar("T")) == "~T"  # no class, no arguments: as Python prints it


def test_mistyped_argument_message_names_the_type():
    reg, _ = _registry()
    with pytest.raises(ConfigError) as e:
        reg.make("thing", size=1, maybe="x")
    assert str(e.value) == "toy policy 'thing' argument maybe='x': expected int | None"


def test_load_all_imports_the_registered_modules_but_not_the_helpers():
    import sys

    _load_all()
    assert "sim.policies.cache.lru" in sys.modules and "sim.policies.placement.split" in sys.modules
    from sim.policies import CACHE, PLACEMENT

    assert {"lru", "fifo", "lifo", "lfu", "belady"} <= set(CACHE.names())
    assert "split" in PLACEMENT.names()


def test_load_all_imports_exactly_the_policy_files(monkeypatch):
    """_load_all imports every policy module on disk under its dotted name, and nothing else: no
    helper (``_*``), not ``base``, no package (the registries fill from these imports; the modules
    are usually imported already, so the calls themselves are what is checked)."""
    from pathlib import Path

    import sim.policies._registry as registry

    seen: list[str] = []
    monkeypatch.setattr(registry.importlib, "import_module", seen.append)
    monkeypatch.setattr(registry, "_loaded", False)  # (walked once a process: walk again)
    _load_all()
    root = Path(registry.__file__).resolve().parent
    want = {"sim.policies." + ".".join(p.relative_to(root).with_suffix("").parts)
            for p in root.rglob("*.py")
            if not p.name.startswith("_") and p.name != "base.py" and "__pycache__" not in p.parts}
    assert {"sim.policies.cache.lru", "sim.policies.placement.split",
            "sim.policies.prefetch.emoe_a", "sim.policies.scheduler.fcfs"} <= want
    assert sorted(seen) == sorted(want) and len(seen) == len(set(seen))
    _load_all()  # walked once: a second call imports nothing
    assert len(seen) == len(want)
