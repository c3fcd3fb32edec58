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

from sim.app.experiments.config import (
    AccuracyExperimentConfig,
    EmoeExperimentConfig,
    HuangExperimentConfig,
    PrefetchExperimentConfig,
)
from sim.app.schemas.cache import CacheAppConfig
from sim.app.schemas.demo import DemoAppConfig
from sim.app.schemas.kernels import KernelsBenchConfig
from sim.app.schemas.placement import PlacementAppConfig
from sim.app.schemas.predictor import PredictorEvalConfig, PredictorTrainConfig
from sim.app.schemas.realrun import RealrunCalibrateConfig, RealrunReplayConfig, RealrunValidateConfig
from sim.world.config import SimConfig

#: app config name (conf/<name>.yaml) -> its schema, stored in the ConfigStore as "<name>_schema"
#: (sim's, sim_schema, by sim.world.config.register_configs)
APPS: dict[str, type] = {
    "sim": SimConfig, "demo": DemoAppConfig,
    "cache": CacheAppConfig, "placement": PlacementAppConfig,
    "realrun_replay": RealrunReplayConfig, "realrun_calibrate": RealrunCalibrateConfig,
    "realrun_validate": RealrunValidateConfig,
    "predictor_train": PredictorTrainConfig, "predictor_eval": PredictorEvalConfig,
    "kernels_bench": KernelsBenchConfig,
    "experiment_emoe": EmoeExperimentConfig, "experiment_huang": HuangExperimentConfig,
    "experiment_accuracy": AccuracyExperimentConfig,
    "experiment_prefetch": PrefetchExperimentConfig,
}


def register_app_schemas(only: str | None = None) -> None:
    """Store every app's schema in Hydra's ConfigStore as ``<app>_schema`` (idempotent); with
    ``only``, ``sim_schema`` and that app's (an app's YAML names only its own schema, and Hydra
    copies the whole store at each composition: a run registers what it composes)."""
    from hydra.core.config_store import ConfigStore

    from sim.world.config import register_configs

    register_configs()  # sim_schema
    cs = ConfigStore.instance()
    for name, schema in APPS.items():
        if name != "sim" and (only is None or name == only):
            cs.store(name=f"{name}_schema", node=schema)
