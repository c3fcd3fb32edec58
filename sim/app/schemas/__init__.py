"""The typed configs (Hydra structured configs: types and keys) of every app but ``sim``, one module
per command beside the shared nodes and helpers:

- :mod:`.common`: ``trace.path``, ``workload.max_requests``; :func:`~.common.app_config`,
  :func:`~.common.limit_requests`;
- :mod:`.cache`, :mod:`.placement`, :mod:`.realrun`, :mod:`.predictor`, :mod:`.kernels`,
  :mod:`.demo`: each command's schema;
- :mod:`.registry`: :data:`~.registry.APPS` (config name -> schema) and
  :func:`~.registry.register_app_schemas`.

The simulator's schema is :class:`sim.world.config.SimConfig` (``sim_schema``), the experiments'
are in :mod:`sim.app.experiments.config`. Nothing is imported here: a command imports its own
schema module only.
"""
