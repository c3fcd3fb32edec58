"""Every Hydra app's schema, by config name, and their registration in Hydra's ConfigStore.

Each app's YAML (``conf/<app>.yaml``, the values) starts its ``defaults`` with ``<app>_schema``,
so Hydra rejects an unknown key or a wrong type before anything runs. :data:`APPS` maps each app's
config name to its schema class (each in the module of its command's schemas: ``cache``,
``placement``, ``realrun``, ``predictor``, ``kernels``, ``demo`` here, the experiments' in
:mod:`sim.app.experiments.config`, the simulator's in :mod:`sim.world.config`); a command turns its
config node into that class with :func:`sim.app.schemas.common.app_config`. ``MISSING`` marks a
key the command line must give (``???`` in YAML).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

#: app config name -> its schema class as ``module:Class`` (stored in the ConfigStore as
#: "<name>_schema"; sim's, sim_schema, by sim.world.config.register_configs)
_SCHEMAS: dict[str, str] = {
    "sim": "sim.world.config:SimConfig", "demo": "sim.app.schemas.demo:DemoAppConfig",
    "cache": "sim.app.schemas.cache:CacheAppConfig",
    "placement": "sim.app.schemas.placement:PlacementAppConfig",
    "realrun_replay": "sim.app.schemas.realrun:RealrunReplayConfig",
    "realrun_calibrate": "sim.app.schemas.realrun:RealrunCalibrateConfig",
    "realrun_validate": "sim.app.schemas.realrun:RealrunValidateConfig",
    "predictor_train": "sim.app.schemas.predictor:PredictorTrainConfig",
    "predictor_eval": "sim.app.schemas.predictor:PredictorEvalConfig",
    "kernels_bench": "sim.app.schemas.kernels:KernelsBenchConfig",
    "experiment_emoe": "sim.app.experiments.config:EmoeExperimentConfig",
    "experiment_huang": "sim.app.experiments.config:HuangExperimentConfig",
    "experiment_accuracy": "sim.app.experiments.config:AccuracyExperimentConfig",
    "experiment_prefetch": "sim.app.experiments.config:PrefetchExperimentConfig",
}


class _Apps(Mapping[str, type]):
    """The app names, each schema class imported when first looked up: a run imports its own
    app's schema module, not the other apps' (the experiments' configs alone take 15 ms)."""

    def __getitem__(self, name: str) -> type:
        module, _, cls = _SCHEMAS[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def __contains__(self, name: object) -> bool:
        return name in _SCHEMAS

    def __iter__(self) -> Iterator[str]:
        return iter(_SCHEMAS)

    def __len__(self) -> int:
        return len(_SCHEMAS)


#: app config name (conf/<name>.yaml) -> its schema
APPS: Mapping[str, type] = _Apps()


def load_app_schemas(only: str | None = None) -> None:
    """Import the modules :func:`register_app_schemas` would register from (``sim_schema``'s and,
    with ``only``, that app's), registering nothing: the config cache
    (:mod:`sim.app.config_cache`) hashes their source before it decides whether to compose."""
    import sim.world.config  # noqa: F401 - sim_schema's module

    for name in APPS:
        if only is None or name == only:
            APPS[name]  # noqa: B018 - imports its module


def register_app_schemas(only: str | None = None) -> None:
    """Store every app's schema in Hydra's ConfigStore as ``<app>_schema`` (idempotent); with
    ``only``, ``sim_schema`` and that app's (an app's YAML names only its own schema, and Hydra
    copies the whole store at each composition: a run registers what it composes)."""
    from hydra.core.config_store import ConfigStore

    from sim.world.config import register_configs

    register_configs()  # sim_schema
    cs = ConfigStore.instance()
    for name in APPS:
        if name != "sim" and (only is None or name == only):
            cs.store(name=f"{name}_schema", node=APPS[name])
