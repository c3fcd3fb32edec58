"""The ground floor: the one exception family (:mod:`.errors`) and atomic writes and the input-file
reader (:mod:`.files`). Imports nothing of moesim; every other package may import it.
"""
