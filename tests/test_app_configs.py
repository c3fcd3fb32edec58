"""Every Hydra app's config composes (Hydra's compose API) and converts to its schema dataclass;
every app YAML starts its defaults with its schema, so an unknown key or a wrong type is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sim.app.schemas.common import app_config
from sim.app.schemas.registry import APPS, register_app_schemas

CONF = Path(__file__).resolve().parents[1] / "conf"
#: values for the keys an app's YAML leaves ??? (the command line must give them)
REQUIRED = {"trace.path": "t.parquet", "checkpoint": "ck"}


def _compose(name: str, overrides: list[str] = ()):  # type: ignore[assignment]
    register_app_schemas()
    with initialize_config_module("conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _filled(name: str, overrides: list[str] = ()):  # type: ignore[assignment]
    cfg = _compose(name, overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    assert set(missing) <= set(REQUIRED), missing
    return _compose(name, [*overrides, *(f"{k}={REQUIRED[k]}" for k in missing)])


def test_every_app_yaml_has_a_schema():
    apps = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert apps == sorted(APPS)
    for name in apps:
        defaults = yaml.safe_load((CONF / f"{name}.yaml").read_text()).get("defaults", [])
        assert defaults and defaults[0] == f"{name}_schema", name


@pytest.mark.parametrize("name", sorted(APPS))
def test_app_config_composes_and_converts(name):
    obj = app_config(_filled(name), APPS[name])
    assert isinstance(obj, APPS[name])


def _keys(cfg, prefix=""):
    from omegaconf import DictConfig

    for k in cfg:
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            yield from _keys(node, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


@pytest.mark.parametrize("name", sorted(APPS))
def test_unknown_key_and_wrong_type_are_refused(name):
    with pytest.raises(ConfigCompositionException):
        _compose(name, ["no_such_key=1"])
    cfg = _compose(name)
    int_key = next(k for k in _keys(cfg) if OmegaConf.get_type(OmegaConf.select(
        cfg, k.rpartition(".")[0]) if "." in k else cfg, k.rpartition(".")[2]) is int)
    with pytest.raises(ConfigCompositionException):
        _compose(name, [f"{int_key}=x"])


def test_app_values_are_the_yaml_values():
    cache = app_config(_filled("cache"), APPS["cache"])
    assert cache.cluster.expert_budget_fractions == [0.25, 0.5, 0.75] and cache.model is None
    assert cache.expert_bytes is None and cache.workload.max_requests == 0
    chosen = app_config(_filled("cache", ["model=mixtral-8x7b"]), APPS["cache"])
    assert chosen.model.name == "mixtral-8x7b"
    tiny = app_config(_filled("predictor_train", ["predictor=tiny"]), APPS["predictor_train"])
    assert tiny.predictor.window == 32 and tiny.predictor.token.d_model == 32
    layers = app_config(_filled("predictor_train", ["predictor=layers"]), APPS["predictor_train"])
    assert layers.predictor.token.mode == "token_layers" and layers.predictor.token.epochs == 8
    bench = app_config(_filled("kernels_bench"), APPS["kernels_bench"])
    assert bench.out_dir is None and bench.tune_space.num_warps == [4, 8]
    replay = app_config(_filled("realrun_replay"), APPS["realrun_replay"])
    assert replay.trace.path == "" and replay.model.name == "deepseek-v2-lite"


# ------------------------------------------------------------------------------------------------
# every option of every config group composes (in an app that uses the group), launchers included
# ------------------------------------------------------------------------------------------------
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",)
                and not p.name.startswith("_") and any(p.glob("*.yaml")))
#: launcher configs: hydra's plugins (installed) and moesim's own conf/hydra/launcher/*.yaml
LAUNCHERS = sorted({"basic", "joblib", "submitit_local", "submitit_slurm",
                    *(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))})
#: an option that needs a key filled to compose
OPTION_NEEDS = {("trace", "file"): ["trace.path=t.parquet"]}


def _apps_using(group: str) -> list[str]:
    out = []
    for name in sorted(APPS):
        defaults = yaml.safe_load((CONF / f"{name}.yaml").read_text()).get("defaults", [])
        if any(isinstance(d, dict) and group in d for d in defaults):
            out.append(name)
    return out


def test_every_group_is_used_by_an_app():
    assert GROUPS and all(_apps_using(g) for g in GROUPS), {g: _apps_using(g) for g in GROUPS}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    app = _apps_using(group)[0]
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    register_app_schemas()
    with initialize_config_module("conf", version_base="1.3"):  # one context: fast
        for opt in options:
            over = [f"{group}={opt}", *OPTION_NEEDS.get((group, opt), [])]
            cfg = compose(app, overrides=over)
            missing = sorted(OmegaConf.missing_keys(cfg))
            cfg = compose(app, overrides=[*over, *(f"{k}={REQUIRED[k]}" for k in missing)])
            assert isinstance(app_config(cfg, APPS[app]), APPS[app]), (group, opt)


def test_every_launcher_config_composes():
    register_app_schemas()
    with initialize_config_module("conf", version_base="1.3"):
        for launcher in LAUNCHERS:
            cfg = compose("sim", overrides=[f"hydra/launcher={launcher}"],
                          return_hydra_config=True)
            target = cfg.hydra.launcher._target_
            assert target.startswith("hydra") and target.endswith("Launcher"), (launcher, target)
            if launcher == "ray":  # moesim's own config for the (uninstalled) Ray plugin
                assert "ray_launcher" in target and "address" in cfg.hydra.launcher.ray.init
