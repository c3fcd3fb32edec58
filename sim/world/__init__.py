"""The facts of the world every driver shares, written once: the simulator's config schema
(:mod:`.config`), model sizes (:mod:`.model`), the shared facts (:mod:`.facts`: cache slots, the
cache-counts record, batch semantics), the cluster topology (:mod:`.topology`), the network's
links (:mod:`.network`) and the split of a replicated expert's tokens (:mod:`.token_split`).
Imports only ``sim.common``.
"""
