"""A host-to-device link: each GPU has its own, with a copy engine separate from compute, so copies
overlap compute. Demand copies (the misses a computing layer waits on) take the link first;
prefetch copies are served one at a time, in the order issued, in the time demand copies leave.

Why this rule, and why it is exact. The simulator walks an iteration's layers when the iteration
starts (:mod:`sim.serving.walk`), so a layer's demand copy is booked, and its end used, before a
prefetch issued at a moment inside that iteration (a request routed to the replica,
:meth:`sim.serving.prediction.Prediction.issue`) is known. A copy may therefore arrive at the link
with a start earlier than copies already booked. Under this rule no copy's end depends on a copy
issued after it: a demand copy owns the link while it runs (the running iteration's ends stay
true), and a prefetch copy only takes time no earlier copy uses (an earlier prefetch's end is
unchanged). Each copy still starts at its own time: a prefetch issued at 0.5 s on an idle link
moves bytes from 0.5 s, pauses while a demand copy booked for 1.0 s runs, and resumes after it.
(Processor sharing as arrivals happen would instead need the running iteration timed again
whenever a copy arrives during it.) In hardware terms: demand copies on a high-priority stream,
prefetches on one stream of their own, in chunks that yield to the demand stream.

The order issued is time order for a policy that prefetches per request (issued when a request
is routed) or per next layer (issued by the walk at a layer's gate); for one that does both
(``similarity``), a request's copy issued during an iteration queues behind the next-layer copies
the walk has already issued for later moments of that iteration.

A prefetch copy whose expert is evicted before it lands is not cancelled: it keeps its place and
its bytes on the link and completes (no one waits for it; :meth:`Link.forget`).
"""

from __future__ import annotations

from collections import deque

from sim.common.errors import ConfigError, MoesimError

_INF = float("inf")


class Link:
    """One direction of a host link of ``bytes_per_s``.

    - ``fetch(t, nbytes)``: a demand copy the caller waits on; it starts at ``t + latency_s`` (or
      when the previous demand copy ends) and runs at the full rate: returns its end.
    - ``add(t, nbytes)``: a prefetch copy issued at ``t`` (its start ``t + latency_s``); returns an
      id. Prefetch copies run one at a time in the order added, each from its start or the
      previous one's end, whichever is later, and pause while a demand copy runs (booked before
      or after it: ``gaps``). ``finish(tid)`` is its end.
    - ``floor(t)``: no copy will be issued before ``t`` any more (the simulator's clock): what
      ended before ``t`` is dropped.

    ``bytes_total`` accumulates. The demand copies' state is the last one's start ``t`` and bytes
    ``_solo`` (0: none), so a fetch on a link whose last copy is done takes a few float
    operations (and :meth:`sim.serving.layer_timing.LayerTiming.time_counts` sets them directly,
    leaving its demand intervals in ``_lazy`` until a prefetch needs them).
    """

    __slots__ = ("bytes_per_s", "latency_s", "t", "done", "next_id", "bytes_total", "infinite",
                 "_solo", "pq", "queued", "pt", "gaps", "_lazy")

    def __init__(self, bytes_per_s: float, latency_s: float = 0.0) -> None:
        if not bytes_per_s > 0:
            raise ConfigError(f"link bandwidth must be > 0, got {bytes_per_s}")
        self.bytes_per_s = float(bytes_per_s)
        self.infinite = self.bytes_per_s == _INF
        self.latency_s = float(latency_s)
        self.t = 0.0  # start of the last demand copy
        self._solo: float = 0.0  # its bytes (0: none)
        self.done: dict[int, float] = {}  # prefetch tid -> end, until asked
        self.next_id = 0
        self.bytes_total = 0.0
        #: prefetch copies not yet served, in order: [tid (-1: forgotten), bytes left, start]
        self.pq: deque[list] = deque()
        self.queued: dict[int, list] = {}  # tid -> its entry in ``pq``
        self.pt = 0.0  # prefetch clock: the queue is served up to here
        #: demand copies' (start, end), in time order, that prefetches must pause for
        self.gaps: list[tuple[float, float]] = []
        #: demand intervals time_counts left unlisted: (GPU column, starts, ends (L, 1|G), fetched)
        self._lazy: tuple | None = None

    # -- demand copies --------------------------------------------------------------------------
    def fetch(self, t: float, nbytes: float) -> float:
        """A demand copy issued at ``t`` that the caller waits on; returns its end."""
        self.bytes_total += nbytes
        start = t + self.latency_s
        if self.infinite or nbytes <= 0:
            return start
        bw = self.bytes_per_s
        solo = self._solo
        if solo:
            prev = self.t + solo / bw
            if prev > start:  # (never in the walk: a layer ends after its copies)
                start = prev
        if start < self.pt and self.pq:
            raise MoesimError(f"internal: a demand copy at {start} after prefetches were served "
                              f"up to {self.pt}")
        fin = start + nbytes / bw
        self.t = start
        self._solo = float(nbytes)
        if self._lazy is not None:
            self._unlazy()
        self.gaps.append((start, fin))
        return fin

    def _unlazy(self) -> None:
        g, starts, fins, fetched = self._lazy
        self._lazy = None
        col = fins[:, g if fins.shape[1] > 1 else 0].tolist()
        sel = fetched[:, g].tolist()
        self.gaps.extend((starts[l], col[l]) for l in range(len(sel)) if sel[l])

    # -- prefetch copies ------------------------------------------------------------------------
    def add(self, t: float, nbytes: float) -> int:
        """A prefetch copy issued at ``t``; returns its id for :meth:`finish`."""
        tid = self.next_id
        self.next_id += 1
        self.bytes_total += nbytes
        start = t + self.latency_s
        if self.infinite or nbytes <= 0:
            self.done[tid] = start
            return tid
        if self._lazy is not None:
            self._unlazy()
        item = [tid, float(nbytes), start]
        self.pq.append(item)
        self.queued[tid] = item
        return tid

    def _serve(self, until: int | None, horizon: float) -> float:
        """Serve the prefetch queue from ``pt`` up to ``horizon`` or until copy ``until`` ends
        (its end is returned; else ``pt``). Demand copies in ``gaps`` pause it."""
        bw, pq, gaps, done = self.bytes_per_s, self.pq, self.gaps, self.done
        t, gi, ng = self.pt, 0, len(gaps)
        while pq:
            head = pq[0]
            if head[2] > t:
                if head[2] >= horizon:
                    break
                t = head[2]
            if t >= horizon:
                break
            while gi < ng and gaps[gi][1] <= t:
                gi += 1
            if gi < ng and gaps[gi][0] <= t:  # a demand copy runs: wait for its end
                t = gaps[gi][1]
                gi += 1
                continue
            wend = gaps[gi][0] if gi < ng else _INF
            if horizon < wend:
                wend = horizon
            fin = t + head[1] / bw
            if fin <= wend:
                t = fin
                pq.popleft()
                if head[0] >= 0:
                    done[head[0]] = t
                    del self.queued[head[0]]
                if head[0] == until:
                    break
            else:
                head[1] -= (wend - t) * bw
                t = wend
        self.pt = t
        if gi:
            del gaps[:gi]  # (they end by ``t``; a later copy starts after ``t``)
        return t

    def finish(self, tid: int) -> float:
        """End of prefetch copy ``tid`` given the demand copies booked so far (forgotten
        afterwards); exact once every demand copy starting before that end is booked, as the walk
        asks it (a layer books its own copy, then waits for its prefetched keys)."""
        if tid in self.done:
            return self.done.pop(tid)
        if tid not in self.queued:
            raise KeyError(f"unknown transfer {tid}")
        self._serve(tid, _INF)
        return self.done.pop(tid)

    def finish_peek(self, tid: int) -> float:
        """:meth:`finish` as known now, changing nothing (later demand copies may delay it)."""
        if tid in self.done:
            return self.done[tid]
        saved = (self.pq, self.queued, self.pt, self.gaps, self.done)
        self.pq = deque([list(x) for x in saved[0]])
        self.queued = {x[0]: x for x in self.pq if x[0] >= 0}
        self.gaps, self.done = list(saved[3]), {}
        try:
            return self.finish(tid)
        finally:
            self.pq, self.queued, self.pt, self.gaps, self.done = saved

    def forget(self, tid: int) -> None:
        """No one waits for prefetch copy ``tid`` (its expert was evicted before it landed): it
        is not cancelled, it keeps its place and bytes on the link and completes unrecorded."""
        if self.done.pop(tid, None) is None:
            item = self.queued.pop(tid, None)
            if item is not None:
                item[0] = -1


    def floor(self, t: float) -> None:
        """No copy will be issued before ``t`` any more: the prefetch queue is served up to ``t``
        and the demand intervals that ended by then dropped."""
        self._lazy = None  # (the last fast iteration's copies ended by ``t``)
        if self.pq:
            self._serve(None, t)
        gaps = self.gaps
        if gaps and gaps[-1][1] <= t:
            gaps.clear()

    def reset(self, t: float) -> None:
        """Drop every transfer (the GPU failed) and restart the clock at ``t``. The prefetch
        clock restarts at ``t`` too, even where it had been served past ``t``: the iteration
        that served it was walked ahead of time and is cut off by the failure, so its copies
        never ran (kept, it made a later demand copy start "before" prefetches that never
        happened, and delayed the next prefetch behind them)."""
        self._solo = 0.0
        self._lazy = None
        self.pq.clear()
        self.queued.clear()
        self.gaps.clear()
        self.done.clear()
        self.t = max(self.t, t)
        self.pt = t
