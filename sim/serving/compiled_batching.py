"""Compiled (numba) forms of the continuous batcher's array work (:class:`sim.serving.batching.Batcher`):
the running requests' tokens this iteration (:func:`sim.serving.batching.allocate` of their pending
tokens), the processed tokens booked (:meth:`Batcher.begin`) and an iteration's end booked
(:meth:`Batcher.finish`: context, generated tokens, first-token and finish times, completions, KV).
Each gives its reference's bytes (tests/sim/serving/test_compiled_batching.py: kernel against
reference on random inputs, by hand, and whole runs' metrics.json with and without them).

Imported lazily (:func:`sim.serving.batching.batch_kernels`): the batcher imports numba only once
the cluster has formed :data:`sim.serving.walk.COMPILE_AFTER` iterations, the walk's threshold.

Every value is an integer but the times, which are only copied (``now``); the kernels loop over
the batch where numpy gathers and scatters, phase by phase as the reference's statements: each
phase reads all its operands before it writes, so a request repeated in a batch ends as numpy's
fancy assignment leaves it (the last write wins; ``completions[fin] += 1`` adds one once).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def pending_alloc(run, prompt, generated, ctx, budget):  # pragma: no cover - compiled
    """``allocate(prompt[run] + generated[run] - ctx[run], budget)`` and its sum: request j gets
    ``min(max(budget - before, 0), pending)``, ``before`` the pending tokens of the requests ahead
    of it (the reference's ``cumsum - pending``: the same integer)."""
    n = run.shape[0]
    alloc = np.empty(n, dtype=np.int64)
    before = 0
    used = 0
    for j in range(n):
        i = run[j]
        pend = prompt[i] + generated[i] - ctx[i]
        a = min(max(budget - before, 0), pend)
        alloc[j] = a
        used += a
        before += pend
    return alloc, used


@njit(cache=True)
def begin_arrays(processed, batch, alloc):  # pragma: no cover - compiled
    """``processed[batch] += alloc`` (all read, then written) and ``alloc.sum()``."""
    n = batch.shape[0]
    new = np.empty(n, dtype=processed.dtype)
    total = 0
    for j in range(n):
        new[j] = processed[batch[j]] + alloc[j]
        total += alloc[j]
    for j in range(n):
        processed[batch[j]] = new[j]
    return total


@njit(cache=True)
def finish_arrays(batch, alloc, ctx, generated, prompt, output, first_token_s, finish_s,
                  completions, now):  # pragma: no cover - compiled
    """An iteration's end booked in place, as :meth:`Batcher.finish`'s numpy: the requests with
    tokens (``alloc > 0``) hold KV for them; those whose context caught up with their prompt and
    generated tokens generate one (their first token's time set where it is NaN); those that
    reached their output length finish at ``now``. Returns the finished requests, the KV tokens
    added and those the finished free (their context), and the batch without the finished
    requests (every occurrence of them; empty when none finished)."""
    n = batch.shape[0]
    b = np.empty(n, dtype=batch.dtype)
    a = np.empty(n, dtype=alloc.dtype)
    m = 0
    for j in range(n):
        if alloc[j] > 0:
            b[m] = batch[j]
            a[m] = alloc[j]
            m += 1
    cnew = np.empty(m, dtype=np.int64)
    added = 0
    for k in range(m):
        cnew[k] = ctx[b[k]] + a[k]
        added += a[k]
    for k in range(m):
        ctx[b[k]] = cnew[k]
    gen = np.empty(m, dtype=b.dtype)
    ngen = np.empty(m, dtype=np.int64)
    ng = 0
    for k in range(m):
        g = generated[b[k]]
        if cnew[k] == prompt[b[k]] + g:
            gen[ng] = b[k]
            ngen[ng] = g + 1
            ng += 1
    for k in range(ng):
        generated[gen[k]] = ngen[k]
    first = np.zeros(ng, dtype=np.bool_)
    for k in range(ng):
        first[k] = np.isnan(first_token_s[gen[k]])
    for k in range(ng):
        if first[k]:
            first_token_s[gen[k]] = now
    fin = np.empty(ng, dtype=b.dtype)
    nf = 0
    for k in range(ng):
        if ngen[k] >= output[gen[k]]:
            fin[nf] = gen[k]
            nf += 1
    fin = fin[:nf]
    for k in range(nf):
        finish_s[fin[k]] = now
    done = np.empty(nf, dtype=completions.dtype)
    for k in range(nf):
        done[k] = completions[fin[k]] + 1
    freed = 0
    for k in range(nf):
        completions[fin[k]] = done[k]
        freed += ctx[fin[k]]
    rest = np.empty(n if nf else 0, dtype=batch.dtype)
    nr = 0
    for j in range(n if nf else 0):
        keep = True
        for k in range(nf):
            if batch[j] == fin[k]:
                keep = False
                break
        if keep:
            rest[nr] = batch[j]
            nr += 1
    return fin, added, freed, rest[:nr]
