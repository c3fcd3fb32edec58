"""The ``moesim`` command line, the top of the stack: the dispatcher (:mod:`.cli`), the Hydra
plumbing (``hydra_*``), each command's typed config (:mod:`.schemas`), one ``*_cmd`` module per
command, the demo, realrun validation and the experiments. May import every wing and package;
the only importer of ``analysis``, ``kernels`` (besides realrun) and ``realrun``.
"""
