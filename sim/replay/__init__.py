"""The timing-free drivers: the cache replay (:mod:`.cache`, a routing trace through the same
cache and prefetch policy classes; ``replay_log`` for the cross-driver check) and the placement
evaluation (:mod:`.placement`). Import ``sim.serving`` and the wings below; not ``sim.engine``,
``realrun`` or ``sim.app``.
"""
