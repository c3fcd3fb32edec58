"""The composed-config cache (sim/app/config_cache.py): a cached run writes the same bytes as an
uncached one, a changed override, config file, schema source or environment copy is never
served stale, and a file that is not to be trusted is a miss."""

from __future__ import annotations

import io
import json
import pickle
import random
import re
import sys
import types
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from sim.app import config_cache as cc
from sim.app.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[3]
ARGS = ["model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1", "workload.num_requests=6",
        "workload.rate_rps=8", "workload.prompt_tokens_mean=32", "workload.output_tokens_mean=4",
        "trace.pool_size=2", "trace.pool_tokens=64", "cluster.expert_budget_fraction=0.5",
        "output.progress=off", "output.print_summary=false"]
OUTPUTS = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "metrics.json")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder; counts Hydra's real compositions."""
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MOESIM_CONFIG_CACHE", raising=False)
    composed: list[list[str]] = []
    real = ConfigLoaderImpl.load_configuration

    def counting(self, *a, **k):
        composed.append(list(k.get("overrides", a[1] if len(a) > 1 else [])))
        return real(self, *a, **k)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counting)
    return composed


def _run(d: Path, *extra: str) -> None:
    assert cli_main(["sim", *ARGS, *extra, f"hydra.run.dir={d}"]) == 0


def _outputs(d: Path) -> dict[str, str]:
    out = {f: (d / f).read_text().replace(str(d), "RUN_DIR") for f in OUTPUTS}
    info = json.loads((d / "run_info.json").read_text())
    out["run_info"] = json.dumps({k: v for k, v in info.items()
                                  if k not in ("wall_time_s", "sim_s_per_wall_s")}).replace(str(d), "RUN_DIR")
    return out


def _warm(tmp_path: Path, cache: list) -> None:
    """A first run: it loads the simulator's modules, whose source is then in the key of the
    runs after it (a new process's runs all have the same key); what it stored is removed, so
    the next run composes whether or not the modules were loaded before (earlier tests)."""
    _run(tmp_path / "warm")
    for f in (tmp_path / "cache/configs").glob("*.pkl"):
        f.unlink()
    cache.clear()


def test_a_cached_run_writes_the_bytes_of_an_uncached_one(tmp_path, cache, monkeypatch):
    _warm(tmp_path, cache)
    _run(tmp_path / "a")  # composes and stores
    assert len(cache) == 1 and len(list((tmp_path / "cache/configs").glob("*.pkl"))) == 1
    _run(tmp_path / "b")  # another run folder: served from the cache
    assert len(cache) == 1
    monkeypatch.setenv("MOESIM_CONFIG_CACHE", "off")
    _run(tmp_path / "c")  # no cache at all
    assert len(cache) == 2
    a, b, c, w = (_outputs(tmp_path / n) for n in ("a", "b", "c", "warm"))
    assert a == b == c == w
    hydra_yaml = (tmp_path / "b/.hydra/hydra.yaml").read_text()
    assert f"dir: {tmp_path / 'b'}" in hydra_yaml and f"- hydra.run.dir={tmp_path / 'b'}" in hydra_yaml


def test_a_changed_override_is_composed_again(tmp_path, cache):
    _warm(tmp_path, cache)
    _run(tmp_path / "a", "seed=1")
    _run(tmp_path / "b", "seed=2")
    _run(tmp_path / "c", "seed=1")
    assert len(cache) == 2
    assert "seed: 2" in (tmp_path / "b/.hydra/config.yaml").read_text()
    assert "seed: 1" in (tmp_path / "c/.hydra/config.yaml").read_text()


def test_a_searchpath_folder_is_never_cached(tmp_path, cache):
    """Config files the composition finds through ``hydra.searchpath`` (a folder the key does
    not hash): composed every time, so an edited file is read."""
    extra = tmp_path / "extra/experiment"
    extra.mkdir(parents=True)
    (extra / "cc_probe.yaml").write_text("# @package _global_\nseed: 5\n")
    sp = f"hydra.searchpath=[file://{tmp_path / 'extra'}]"
    _warm(tmp_path, cache)
    _run(tmp_path / "a", sp, "experiment=cc_probe")
    (extra / "cc_probe.yaml").write_text("# @package _global_\nseed: 6\n")
    _run(tmp_path / "b", sp, "experiment=cc_probe")
    assert len(cache) == 2 and len(list((tmp_path / "cache/configs").glob("*.pkl"))) == 0
    assert "seed: 6" in (tmp_path / "b/.hydra/config.yaml").read_text()


def test_an_environment_copy_that_changed_is_a_miss(tmp_path, cache, monkeypatch):
    _warm(tmp_path, cache)
    monkeypatch.setenv("MOESIM_CC_PROBE", "one")
    _run(tmp_path / "a", "hydra.job.env_copy=[MOESIM_CC_PROBE]")
    monkeypatch.setenv("MOESIM_CC_PROBE", "two")
    _run(tmp_path / "b", "hydra.job.env_copy=[MOESIM_CC_PROBE]")
    assert len(cache) == 2
    assert "MOESIM_CC_PROBE: two" in (tmp_path / "b/.hydra/hydra.yaml").read_text()


class _Loader:
    """What config_key reads of Hydra's ConfigLoaderImpl: the search path."""

    def __init__(self, *paths: tuple[str, str]) -> None:
        self.config_search_path = types.SimpleNamespace(
            get_path=lambda: [types.SimpleNamespace(provider=p, path=s) for p, s in paths])


def _key(loader, overrides=("a=1",)):
    found = cc.config_key(loader, "sim", list(overrides), "RunMode.RUN", True, True)
    return None if found is None else found[0]


def test_the_key_covers_every_source_file_and_the_project_source(tmp_path, monkeypatch):
    pkg = tmp_path / "cc_probe_pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model/m.yaml").write_text("a: 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.yaml").write_text("b: 1\n")
    loader = _Loader(("hydra", "pkg://hydra.conf"), ("main", "pkg://cc_probe_pkg"),
                     ("extra", f"file://{other}"), ("schema", "structured://"))
    k0 = _key(loader)
    assert k0 == _key(loader) and re.fullmatch(r"[0-9a-f]{64}", k0)
    (pkg / "model/m.yaml").write_text("a: 2\n")  # a config's bytes
    k1 = _key(loader)
    (pkg / "model/n.yaml").write_text("a: 2\n")  # a new config
    k2 = _key(loader)
    (other / "x.yaml").write_text("b: 2\n")  # a file:// folder's
    k3 = _key(loader)
    probe = tmp_path / "probe.py"  # a project module's source
    probe.write_text("X = 1\n")
    monkeypatch.setitem(sys.modules, "sim._cc_probe", types.SimpleNamespace(__file__=str(probe)))
    k4 = _key(loader)
    probe.write_text("X = 2\n")
    k5 = _key(loader)
    k6 = _key(loader, ["a=2"])  # the overrides
    assert len({k0, k1, k2, k3, k4, k5, k6}) == 7
    # a source the key cannot hash: not cached; nor a search path the overrides extend
    assert _key(_Loader(("main", "http://x"))) is None
    assert _key(_Loader(("main", f"file://{tmp_path / 'none'}"))) is None
    assert _key(loader, ["hydra.searchpath=[file:///x]"]) is None


def test_a_plain_run_dir_is_a_placeholder_in_the_key(tmp_path):
    loader = _Loader(("schema", "structured://"))
    a = cc.config_key(loader, "sim", ["x=1", "hydra.run.dir=/tmp/a"], "RUN", True, True)
    b = cc.config_key(loader, "sim", ["x=1", "hydra.run.dir=out/b-2.x_y@z%H:M+1"], "RUN", True, True)
    assert a == (b[0], 1)
    # not plain (an interpolation, a space, no slash, twice): the text itself is in the key
    for odd in (["x=1", "hydra.run.dir=/tmp/${now:%H}"], ["x=1", "hydra.run.dir=/tmp/a b"],
                ["x=1", "hydra.run.dir=1e3"], ["hydra.run.dir=/a", "hydra.run.dir=/a"]):
        found = cc.config_key(loader, "sim", odd, "RUN", True, True)
        assert found[1] is None and found[0] != a[0]


def test_plain_run_dirs_parse_as_their_own_text():
    """:data:`PLAIN_DIR`: Hydra's override parser gives back the value's text, a string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    rng = random.Random(0)
    alphabet = "abcXYZ019_./@%+:-"
    samples = ["/", "a/", "/1", "1/2", "1e3/4", "true/false", "null/", "./x", "out/%Y-%m-%d/%H:%M",
               "a+b/c@d", "-1/", ":/:"]
    for _ in range(300):
        n = rng.randint(0, 12)
        text = "".join(rng.choice(alphabet) for _ in range(n))
        cut = rng.randint(0, n)
        samples.append(text[:cut] + "/" + text[cut:])
    for v in samples:
        assert cc.PLAIN_DIR.fullmatch(v), v
        assert parser.parse_override(f"hydra.run.dir={v}").value() == v, v
    for v in ("a", "1", "a b/", "$x/", "a\\b/", "'a'/", "a,b/", "[a]/", "a=b/", "ä/"):
        assert not cc.PLAIN_DIR.fullmatch(v), v


def test_a_file_not_to_be_trusted_is_a_miss(tmp_path):
    from omegaconf import OmegaConf

    key = "ab" * 32
    cc.write_config(tmp_path, key, {"cfg": OmegaConf.create({"a": 1}), "run_dir": None})
    path = tmp_path / f"{key}.pkl"
    assert cc.read_config(path, key)["cfg"] == {"a": 1}
    assert cc.read_config(path, "cd" * 32) is None  # another key
    data = path.read_bytes()
    path.write_bytes(data[:-3] + b"xyz")  # bytes that do not match the digest
    assert cc.read_config(path, key) is None
    path.write_bytes(data[:40])  # cut short
    assert cc.read_config(path, key) is None
    # a pickle naming a function (code it would run), with a right digest: refused
    import hashlib

    from hydra.utils import instantiate

    for code in (print, instantiate, cc.write_config):  # a builtin, Hydra's, the project's
        body = pickle.dumps({"cfg": code})
        path.write_bytes(cc._MAGIC + key.encode() + b"\n"
                         + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        assert cc.read_config(path, key) is None
    assert cc.read_config(tmp_path / "missing.pkl", key) is None


def test_the_folder_keeps_the_newest_files(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(cc, "MAX_FILES", 3)
    for i in range(5):
        cc.write_config(tmp_path, f"{i:064x}", {"cfg": i, "run_dir": None})
        os.utime(tmp_path / f"{i:064x}.pkl", ns=(10**9 * i, 10**9 * i))
    cc.write_config(tmp_path, f"{9:064x}", {"cfg": 9, "run_dir": None})
    assert sorted(p.stem[-1] for p in tmp_path.glob("*.pkl")) == ["3", "4", "9"]


def test_project_packages_are_pyprojects():
    text = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[([^\]]*)\]", text)[1]
    assert sorted(re.findall(r'"(\w+)\*"', include)) == sorted(cc.PROJECT_PACKAGES)


def _same_nodes(a, b, where="") -> None:
    """Two OmegaConf trees alike node by node: keys, values, metadata (types, flags)."""
    from omegaconf import DictConfig, ListConfig

    assert type(a) is type(b), where
    assert a._metadata == b._metadata, where
    if isinstance(a, DictConfig | ListConfig):
        ka = list(a.keys()) if isinstance(a, DictConfig) else list(range(len(a)))
        kb = list(b.keys()) if isinstance(b, DictConfig) else list(range(len(b)))
        assert ka == kb, where
        if not a._is_none() and not a._is_missing():
            for k in ka:
                _same_nodes(a._get_node(k), b._get_node(k), f"{where}.{k}")
    else:
        assert a._value() == b._value() and type(a._value()) is type(b._value()), where


def test_the_stored_config_comes_back_node_for_node():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sim.app.schemas.registry import register_app_schemas

    register_app_schemas("sim")
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("sim", overrides=["experiment=bench_azure_mixtral", "seed=3"],
                      return_hydra_config=True)
    back = cc._Unpickler(io.BytesIO(pickle.dumps(cfg))).load()
    _same_nodes(cfg, back)
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(back)
