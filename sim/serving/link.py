"""A host-to-device link whose concurrent transfers share its bandwidth equally (processor
sharing); each GPU has its own, with a copy engine separate from compute, so copies overlap compute."""

from __future__ import annotations

from sim.common.errors import ConfigError


class Link:
    """One direction of a link whose concurrent transfers share ``bytes_per_s`` equally.

    ``add(t, nbytes)`` starts a transfer at ``t + latency_s`` (calls come in non-decreasing
    ``t``); ``finish(tid)`` is its completion time given the transfers added so far, exact as
    long as it is asked before a later ``add`` could overlap it (the simulator asks for a copy it
    waits on before it issues anything later). ``bytes_total`` accumulates.

    A transfer that ``fetch`` starts on an idle link is held apart (``_solo``: its start clock
    and bytes) instead of in ``active``: the next ``fetch`` after it has finished drops it in a
    few float operations, and any other call first puts it into ``active`` exactly as if it had
    been there all along, so the processor sharing is unchanged.
    """

    __slots__ = ("bytes_per_s", "latency_s", "t", "active", "done", "next_id", "bytes_total",
                 "infinite", "_solo")

    def __init__(self, bytes_per_s: float, latency_s: float = 0.0) -> None:
        if not bytes_per_s > 0:
            raise ConfigError(f"link bandwidth must be > 0, got {bytes_per_s}")
        self.bytes_per_s = float(bytes_per_s)
        self.infinite = self.bytes_per_s == float("inf")
        self.latency_s = float(latency_s)
        self.t = 0.0
        self.active: dict[int, float] = {}  # tid -> remaining bytes
        self.done: dict[int, float] = {}  # tid -> finish time
        self.next_id = 0
        self.bytes_total = 0.0
        self._solo: float = 0.0  # bytes of the transfer held apart (0: none); it started at self.t

    def _unsolo(self) -> None:
        if self._solo:
            self.active[-1 - self.next_id] = self._solo
            self.next_id += 1
            self._solo = 0.0

    def _advance(self, t: float) -> None:
        self._unsolo()
        active = self.active
        bw = self.bytes_per_s
        while active and self.t < t:
            n = len(active)
            m = min(active.values())
            dt = m * n / bw
            if self.t + dt <= t:
                self.t += dt
                for k in list(active):
                    r = active[k] - m
                    if r <= 1e-6:
                        del active[k]
                        if k >= 0:
                            self.done[k] = self.t
                    else:
                        active[k] = r
            else:
                d = (t - self.t) * bw / n
                for k in active:
                    active[k] -= d
                self.t = t
        if self.t < t:
            self.t = t

    def add(self, t: float, nbytes: float) -> int:
        tid = self.next_id
        self.next_id += 1
        self.bytes_total += nbytes
        start = t + self.latency_s
        if self.infinite or nbytes <= 0:
            self.done[tid] = start
            return tid
        self._advance(start)
        self.active[tid] = float(nbytes)
        return tid

    def fetch(self, t: float, nbytes: float) -> float:
        """Start a transfer the caller waits on right away; returns its completion time.

        Same as ``finish(add(t, nbytes))``, but the transfer's completion is not kept for a later
        ``finish`` (nothing asks twice), and an idle link takes a short path."""
        self.bytes_total += nbytes
        start = t + self.latency_s
        solo = self._solo
        if solo and nbytes > 0:
            bw = self.bytes_per_s
            if not self.active and self.t + solo / bw <= start:
                # the common case: the one earlier transfer is a fetch, done by ``start``
                self.t = start
                self._solo = float(nbytes)
                return start + nbytes / bw
        if self.infinite or nbytes <= 0:
            return start
        active = self.active
        if solo:
            self._unsolo()
        if len(active) == 1:
            (k, r), = active.items()
            dt = r / self.bytes_per_s
            if self.t + dt <= start:
                del active[k]
                if k >= 0:
                    self.done[k] = self.t + dt
                self.t = start
            else:
                self._advance(start)
        elif active:
            self._advance(start)
        elif start > self.t:
            self.t = start
        if not active:
            self._solo = float(nbytes)
            return start + nbytes / self.bytes_per_s
        tid = -1 - self.next_id  # negative ids: not recorded in ``done``
        self.next_id += 1
        active[tid] = float(nbytes)
        return self.finish(tid)

    def finish(self, tid: int) -> float:
        """Completion time of transfer ``tid`` (forgotten afterwards)."""
        if tid in self.done:
            return self.done.pop(tid)
        self._unsolo()
        rem = sorted(self.active.items(), key=lambda kv: kv[1])
        t, prev, n = self.t, 0.0, len(rem)
        for i, (k, r) in enumerate(rem):
            t += (r - prev) * (n - i) / self.bytes_per_s
            prev = r
            if k == tid:
                return t
        raise KeyError(f"unknown transfer {tid}")

    def finish_peek(self, tid: int) -> float:
        """Like :meth:`finish` but keeps the transfer's record for a later ``finish``."""
        if tid in self.done:
            return self.done[tid]
        return self.finish(tid)

    def forget(self, tid: int) -> None:
        self.done.pop(tid, None)

    def reset(self, t: float) -> None:
        """Drop every transfer (the GPU failed) and restart the clock at ``t``."""
        self._solo = 0.0
        self.active.clear()
        self.done.clear()
        self.t = max(self.t, t)
