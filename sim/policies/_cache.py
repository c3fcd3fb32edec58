"""The cache-policy interface and the one routine that serves a step (re-exported by ``base``).

A cache policy supplies its rule only: :meth:`CachePolicy._victims` (which resident keys go, in
eviction order) and the touch hooks :meth:`~CachePolicy._on_step` / :meth:`~CachePolicy._on_insert`
(what a served step or a prefetch does to its own state). :meth:`CachePolicy._serve` applies the
protocol once; ``access``, ``access_steps``, ``replay`` and ``insert`` are all built on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from sim.common.errors import ConfigError
from sim.policies._registry import NoArgs, Registry
from sim.world.facts import CacheCounts

#: the active set of a step with none (or of a policy that ignores it)
NO_KEYS: frozenset[int] = frozenset()


class CachePolicy(ABC):
    """A cache of ``capacity`` slots over keys ``0..num_keys-1``; subclasses pick victims.

    Driving protocol (the simulator, the replay and realrun all use exactly this):

    ``access(step, keys, active=None)`` serves one step that needs ``keys`` (distinct ints) at
    once. Resident keys are hits. Missing keys are loaded in increasing key order; each load into
    a full cache first evicts a victim the policy picks (``_victims``) among resident keys *not*
    in ``keys``. If every resident key is needed by the step (capacity < len(keys)), the key
    streams through: it counts as a miss and is not kept. Returns ``(misses, evicted)``, both
    lists in the order they happened.

    ``active`` is the set of keys the surrounding batch still needs (Huang et al.'s "active
    experts"); it reaches only policies declaring ``uses_active``, the others behave as if it
    were empty.

    ``insert(step, keys, protect=(), active=None)`` loads keys ahead of need (prefetch) with the
    same eviction rule, never evicting a key in ``protect`` (the driver protects the experts of
    the layer being computed and of the prefetch's own target layer) nor, for a policy that uses
    ``active``, an active key (Huang et al.'s buffering: a guess never evicts what the batch
    still needs); a key with no victim it may evict is not loaded (``prefetch_skipped``). It
    returns ``(loaded, evicted)``.

    ``pinned`` (a policy's own set; empty here) are resident keys no step or prefetch may evict
    (eMoE's kept predicted set): a miss that finds only pinned or needed keys to evict streams
    through.

    Steps are non-decreasing ints. Oracles (``requires_future = True``) are handed the whole
    access sequence first via ``set_future``: ``future[i]`` is the array of keys step ``i`` will
    access.

    Hooks every driver calls (no-ops here, so a driver calls them unconditionally):
    ``begin_request(index)`` when a request starts (meaningful where ``uses_requests``) and
    ``set_predicted(keys)`` when a predictor names the next prompts' experts (``uses_prediction``).

    ``counts`` (a :class:`sim.world.facts.CacheCounts`) tallies what the cache did: hits, misses,
    streamed (misses not kept), evictions (by steps and by prefetch), prefetched (keys ``insert``
    loaded), prefetch_skipped (keys ``insert`` did not load: no victim it may evict).
    """

    name: ClassVar[str] = "?"
    Config: ClassVar[type] = NoArgs
    #: reads the future: the driver calls ``set_future`` first (Belady)
    requires_future: ClassVar[bool] = False
    #: its victims depend on the ``active`` set the driver passes (Huang et al.'s buffering)
    uses_active: ClassVar[bool] = False
    #: has ``set_predicted`` (eMoE's keep-the-predicted-set)
    uses_prediction: ClassVar[bool] = False
    #: has a meaningful ``begin_request`` (MoE-Infinity's per-request priority)
    uses_requests: ClassVar[bool] = False
    #: the name of an array form a driver may serve this policy's steps with instead of its
    #: objects, byte-identical to them (``"stamps"``: LRU as recency stamps, a replica's GPUs
    #: at once; the drivers map a name to its store in :data:`sim.serving.lru_arrays.ARRAY_FORMS`);
    #: None: the objects only. Never inherited: a subclass (which may change the rule, as
    #: ``keep_predicted`` changes LRU's victims) declares it again or has none
    array_form: ClassVar[str | None] = None
    #: resident keys never evicted (a policy that keeps a set assigns it; see ``_serve``)
    pinned: frozenset[int] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """An array form is the declaring class's: a subclass without its own declaration has none
        (it may have changed the rule the arrays implement)."""
        super().__init_subclass__(**kwargs)
        cls.array_form = cls.__dict__.get("array_form")

    def __init__(self, capacity: int, num_keys: int, cfg: Any = None) -> None:
        if capacity < 0:
            raise ConfigError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.num_keys = int(num_keys)
        self.cfg = cfg if cfg is not None else type(self).Config()
        self.resident: set[int] = set()
        self.counts = CacheCounts()

    # -- the rule: what a subclass supplies -----------------------------------------------------
    @abstractmethod
    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        """``n`` (>= 1) distinct resident keys not in ``exclude`` nor in ``pinned``, in eviction
        order; there are at least ``n`` such keys. ``active``: the batch's active set (empty
        unless ``uses_active``). The victims are evicted right after; the policy learns of it in
        the touch hook."""

    def _on_step(self, step: int, row: list[int], loaded: list[int],  # noqa: B027 - optional
                 evicted: Sequence[int]) -> None:
        """Touch hook of a served step: ``row`` its keys (increasing), ``loaded`` its misses now
        resident (in load order; the other misses streamed through), ``evicted`` the victims that
        made room. Hits are the keys of ``row`` resident before the step."""

    def _on_insert(self, step: int, row: list[int], loaded: list[int],  # noqa: B027 - optional
                   evicted: Sequence[int]) -> None:
        """Touch hook of a prefetch: ``loaded`` keys now resident, ``evicted`` the victims.
        ``row`` also holds the protected resident keys (they are not touched)."""

    def _fast_steps(self, active: Collection[int]
                    ) -> Callable[..., tuple[int, int, int, int, int]] | None:
        """The policy's fast form of one-key steps that are not prefetches, for steps served
        under ``active``, or None (the default: :meth:`_serve` runs its own plan).

        A fast form ``run(rows, i, step, missed, evicted, counts)`` serves ``rows[i]``, ``rows[i + 1]``,
        ... (steps ``step``, ``step + 1``, ...) while each has at most one key, exactly as
        :meth:`_serve`'s plan with ``_victims`` and ``_on_step`` would (appending each row's
        misses (their number, with ``counts``) and victims to ``missed`` / ``evicted`` where
        given), and returns (the index of
        the first row it did not serve, keys served, misses, streamed, evictions). The simulator's
        expert-parallel hot path (``OrderedCache``); held equal to the plan by
        tests/sim/policies/test_policy_access_steps.py."""
        return None

    # -- the one routine ------------------------------------------------------------------------
    def _serve(self, first_step: int, rows: Iterable[list[int]], active: Collection[int],
               missed: list[list[int]] | None = None, evicted: list[list[int]] | None = None,
               prefetch: bool = False, steps: bool = False) -> int:
        """Serve steps ``first_step + i`` needing ``rows[i]`` (distinct keys: a list in increasing
        order, or any collection of one key; an empty row takes no step). Returns the misses.
        With ``steps`` (``access_steps``) a row is any collection of distinct keys (sorted here)
        and ``missed`` receives each row's number of misses.
        ``missed`` / ``evicted`` (if given) receive each row's misses / victims. With
        ``prefetch`` a row is an ``insert``: its resident keys are the protected ones, its
        missing keys those to load; ``missed`` receives the loaded ones.

        Per step: missing keys, in row order, are loaded into free slots; past those, each
        evicts one resident key outside the row and outside ``pinned`` (``_victims``); once no
        such key is left the remaining ones stream through (not kept; for a prefetch: skipped)."""
        res = self.resident
        cap = self.capacity
        victims = self._victims
        touch = self._on_insert if prefetch else self._on_step
        pinned = self.pinned
        run = None if prefetch or pinned else self._fast_steps(active)
        rows = rows if isinstance(rows, list | tuple) else list(rows)
        n_keys = misses = streamed = evictions = 0
        i, n_rows = 0, len(rows)
        while i < n_rows:
            if run is not None:
                # the policy's fast form serves the rows from here up to one of 2+ keys
                i, nk, m, st, ev_n = run(rows, i, first_step + i, missed, evicted, steps)
                n_keys += nk
                misses += m
                streamed += st
                evictions += ev_n
                if i == n_rows:
                    break
            step, row = first_step + i, rows[i]
            i += 1
            n = len(row)
            if steps and n > 1:
                row = sorted(row)
            ev: Sequence[int] = ()
            if n == 1:
                # a one-key step (an expert-parallel GPU's layer, a batch's execution): the plan
                # below for n = 1, without its list bookkeeping (the simulator's hot path)
                (k,) = row
                if k in res:
                    miss = kept = []
                else:
                    miss = kept = row
                    misses += 1
                    if len(res) < cap:
                        res.add(k)
                    elif res and not (pinned and len(res) <= len(pinned.intersection(res))):
                        ev = victims(step, 1, row, active)
                        res.discard(ev[0])
                        res.add(k)
                        evictions += 1
                    else:  # no slot at all: streams through
                        kept = []
                        streamed += 1
            elif n:
                miss = [k for k in row if k not in res]
                kept = miss
                if miss:
                    nm = len(miss)
                    misses += nm
                    room = cap - len(res)
                    if nm > room:
                        # victims: resident keys outside the row, one per miss past the free
                        # slots while there are any; the misses left after them stream through
                        n_ev = nm - room
                        n_cand = len(res) - n + nm
                        if pinned:  # pinned resident keys outside the row are no victims
                            n_cand -= len(pinned.intersection(res)) - sum(
                                1 for k in row if k in pinned and k in res)
                        if n_ev > n_cand:
                            streamed += n_ev - n_cand
                            n_ev = n_cand
                        if n_ev:
                            ev = victims(step, n_ev, row, active)
                            res.difference_update(ev)
                            evictions += n_ev
                        kept = miss[:room + n_ev]
                    res.update(kept)
            else:  # an empty row takes no step
                miss = kept = []
                if missed is not None:
                    missed.append(0 if steps else miss)
                if evicted is not None:
                    evicted.append([])
                continue
            n_keys += n
            touch(step, row, kept, ev)
            if missed is not None:
                missed.append(kept if prefetch else len(miss) if steps else miss)
            if evicted is not None:
                evicted.append(list(ev))
        c = self.counts
        c.evictions += evictions
        if prefetch:
            c.prefetched += misses - streamed
            c.prefetch_skipped += streamed
        else:
            c.hits += n_keys - misses
            c.misses += misses
            c.streamed += streamed
        return misses

    def _active(self, active: Iterable[int] | None) -> Collection[int]:
        """The active set as the policy sees it (empty unless it declares ``uses_active``)."""
        if active is None or not self.uses_active:
            return NO_KEYS
        return active if isinstance(active, set | frozenset) else frozenset(int(k) for k in active)

    # -- hooks every driver calls ---------------------------------------------------------------
    def set_future(self, future: Sequence[np.ndarray]) -> None:
        if self.requires_future:
            raise NotImplementedError

    def begin_request(self, index: int) -> None:  # noqa: B027 - a no-op unless uses_requests
        """A new request starts (policies with per-request state, e.g. MoE-Infinity's, reset it)."""

    def set_predicted(self, keys: Iterable[int]) -> None:  # noqa: B027 - unless uses_prediction
        """A predictor names the keys the next prompts will use (eMoE keeps them)."""

    # -- protocol -------------------------------------------------------------------------------
    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        missed: list[list[int]] = []
        evicted: list[list[int]] = []
        self._serve(step, (sorted(set(int(k) for k in keys)),), self._active(active), missed, evicted)
        return missed[0], evicted[0]

    def access_steps(self, first_step: int, rows: Sequence[Any], active: Iterable[int] | None = None
                     ) -> tuple[list[int], int]:
        """Serve steps ``first_step + i`` needing ``rows[i]`` (a collection of distinct keys, maybe
        empty: no step is taken then, but the step number still advances) under one ``active`` set.

        Returns (misses per row, keys streamed through). Exactly equivalent to calling
        :meth:`access` once per non-empty row (the simulator calls this once per GPU and
        iteration, for all layers).
        """
        missed: list[int] = []
        before = self.counts.streamed
        self._serve(first_step, rows, self._active(active), missed, steps=True)  # type: ignore[arg-type]
        return missed, self.counts.streamed - before

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        """Serve steps ``first_step + i`` needing ``keys[i]`` (S, K) distinct ints; return misses.

        Exactly equivalent to calling :meth:`access` once per row (no ``active`` set); the cache
        replay uses it for a layer's whole step sequence.
        """
        return self._serve(first_step, np.sort(np.asarray(keys), axis=1).tolist(), NO_KEYS)

    def insert(self, step: int, keys: Iterable[int], protect: Iterable[int] = (),
               active: Iterable[int] | None = None) -> tuple[list[int], list[int]]:
        """Load ``keys`` ahead of need (those not resident, in increasing order) with the step
        rule; a key in ``protect`` or ``pinned`` is never evicted, and for a policy that uses the
        ``active`` set (Huang et al.'s buffering) neither is an active key: a prefetch is a
        guess, and evicting an expert the running batch still needs trades a certain miss for
        it (with a perfect next-layer prefetch at half of DeepSeek-V2-Lite's experts, LIFO then
        moved 3.1 % more bytes than without prefetch on the same decisions; 0.2 % with the rule).
        The keys left when no victim is left are skipped (``prefetch_skipped``)."""
        res = self.resident
        todo = set(int(k) for k in keys) - res
        if not todo:
            return [], []
        held = {int(k) for k in protect}.intersection(res)
        act = self._active(active)
        if act:
            held.update(act.intersection(res) if isinstance(act, set | frozenset)
                        else (k for k in act if k in res))
        loaded: list[list[int]] = []
        evicted: list[list[int]] = []
        self._serve(step, (sorted(todo | held),), act, loaded, evicted, prefetch=True)
        return loaded[0], evicted[0]


CACHE: Registry[CachePolicy] = Registry("cache", ("capacity", "num_keys"))
