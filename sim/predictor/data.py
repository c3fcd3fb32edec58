"""Data preparation for the expert predictors: prompt split, vocabulary, windows, targets.

Numpy only (no torch), so the split, vocabulary and baselines are usable without torch.

Shape legend: T tokens, L MoE layers, E experts, K top-k, R requests (prompts), W window length,
G character n-gram slots per token.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from traces.format import RoutingTrace

UNK = "<unk>"
PAD_ID = 0  # token id 0 is padding, 1 is <unk>
UNK_ID = 1
MAX_NGRAMS = 24


# ------------------------------------------------------------------------------------------------
# split by prompt
# ------------------------------------------------------------------------------------------------
def prompt_texts(trace: RoutingTrace) -> list[str]:
    """One string per request (token pieces joined by U+0001); '' where the trace has no text."""
    b = trace.request_bounds()
    text = trace.tokens["text"].to_numpy()
    return ["\x01".join("" if t is None else str(t) for t in text[b[i]:b[i + 1]])
            for i in range(len(b) - 1)]


def split_prompts(trace: RoutingTrace, fractions: tuple[float, float, float], seed: int,
                  require: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Split request indices into train/val/test by prompt, never by token.

    Identical prompts (same token text) are kept in the same part, so a test prompt is never a
    copy of a training prompt. Returns sorted int64 request indices per part (trace order).
    A part named in ``require`` that gets no prompt is a ConfigError (training without validation
    prompts would keep the last epoch silently).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, "
                          f"got {list(fractions)}")
    texts = prompt_texts(trace)
    R = len(texts)
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t if t else f"\x00{i}", []).append(i)
    keys = sorted(groups)  # deterministic order independent of dict insertion
    perm = np.random.default_rng(seed).permutation(len(keys))
    n_train = int(round(fractions[0] * R))
    n_val = int(round(fractions[1] * R))
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for gi in perm:
        members = groups[keys[gi]]
        if len(parts["train"]) < n_train:
            parts["train"] += members
        elif len(parts["val"]) < n_val:
            parts["val"] += members
        else:
            parts["test"] += members
    empty = [k for k in require if not parts[k]]
    if empty:
        raise ConfigError(f"split={list(fractions)} of {R} prompt(s) leaves no {' or '.join(empty)} "
                          f"prompts; use a trace with more prompts (trace.path, workload.max_requests) "
                          f"or change split=[train,val,test]")
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()}


def request_rows(bounds: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """Token rows of the given requests (in the given order)."""
    if len(requests) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(bounds[r], bounds[r + 1]) for r in requests]).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# vocabulary (tokenizer-free: built from the training prompts' token pieces)
# ------------------------------------------------------------------------------------------------
@dataclass
class Vocab:
    pieces: list[str]  # index = token id; pieces[0] = "<pad>", pieces[1] = "<unk>"
    num_hash: int  # character n-gram hash buckets (bucket 0 = padding)

    @classmethod
    def build(cls, texts: np.ndarray, min_count: int, num_hash: int) -> Vocab:
        vals, counts = np.unique(np.asarray([str(t) for t in texts], dtype=object).astype(str),
                                 return_counts=True)
        keep = sorted(str(v) for v, c in zip(vals, counts) if c >= min_count)
        return cls(pieces=["<pad>", UNK, *keep], num_hash=int(num_hash))

    def to_json(self) -> str:
        return json.dumps({"pieces": self.pieces, "num_hash": self.num_hash}, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> Vocab:
        return cls.from_json_obj(json.loads(s))

    @classmethod
    def from_json_obj(cls, d: dict) -> Vocab:
        return cls(pieces=list(d["pieces"]), num_hash=int(d["num_hash"]))

    def __len__(self) -> int:
        return len(self.pieces)

    def encode(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (T,) int64 and character n-gram hash ids (T, G) int64 (0 = padding).

        N-grams (1..3 characters of '^piece$') hash with CRC-32, so unseen pieces still get
        features; the same piece always gets the same ids on any machine.
        """
        arr = np.asarray(["" if t is None else str(t) for t in texts], dtype=object).astype(str)
        uniq, inv = np.unique(arr, return_inverse=True)
        index = {p: i for i, p in enumerate(self.pieces)}
        uid = np.array([index.get(str(u), UNK_ID) for u in uniq], dtype=np.int64)
        ug = np.zeros((len(uniq), MAX_NGRAMS), dtype=np.int64)  # (U, G)
        for i, u in enumerate(uniq):
            ug[i] = _ngram_ids(str(u), self.num_hash)
        return uid[inv], ug[inv]


def _ngram_ids(piece: str, num_hash: int) -> np.ndarray:
    s = "^" + piece + "$"
    grams = [s[i:i + n] for n in (1, 2, 3) for i in range(len(s) - n + 1)]
    out = np.zeros(MAX_NGRAMS, dtype=np.int64)
    for j, g in enumerate(grams[:MAX_NGRAMS]):
        out[j] = 1 + zlib.crc32(f"{len(g)}:{g}".encode()) % (num_hash - 1)
    return out


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def multi_hot(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, L, K) expert ids -> (T, L, E) bool."""
    T, L, _ = experts.shape
    out = np.zeros((T, L, num_experts), dtype=bool)
    np.put_along_axis(out, experts.astype(np.int64), True, axis=2)
    return out


def prompt_frequencies(trace: RoutingTrace, requests: np.ndarray | None = None) -> np.ndarray:
    """(R, L, E) float32: each request's share of token activations per expert and layer."""
    b = trace.request_bounds()
    R = len(b) - 1
    req = np.arange(R) if requests is None else np.asarray(requests, dtype=np.int64)
    T, L, K = trace.experts.shape
    E = trace.num_experts
    owner = np.repeat(np.arange(R), np.diff(b))  # (T,)
    counts = np.zeros((R, L, E), dtype=np.float32)
    lidx = np.broadcast_to(np.arange(L)[None, :, None], (T, L, K))
    np.add.at(counts, (np.broadcast_to(owner[:, None, None], (T, L, K)), lidx,
                       trace.experts.astype(np.int64)), 1.0)
    counts /= np.maximum(counts.sum(axis=2, keepdims=True), 1.0)
    return counts[req]


def top_m(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest scores along the last axis; ties go to the smaller index."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :m]


# ------------------------------------------------------------------------------------------------
# windows over prompts (causal context, each token predicted exactly once)
# ------------------------------------------------------------------------------------------------
def windows(bounds: np.ndarray, requests: np.ndarray, window: int) -> np.ndarray:
    """(N, 3) int64 rows ``(start_row, end_row, first_scored_row)`` over the given requests.

    A prompt of at most ``window`` tokens is one window, all scored. A longer one is cut into
    windows of ``window`` tokens with stride ``window // 2``; each token is scored in exactly one
    window, where it sees at least ``window // 2`` earlier tokens (all of them near the start).
    """
    if window < 2:
        raise ConfigError(f"predictor window must be >= 2 tokens, got {window}")
    stride = window // 2
    out: list[tuple[int, int, int]] = []
    for r in requests:
        s0, e0 = int(bounds[r]), int(bounds[r + 1])
        s = s0
        out.append((s, min(s + window, e0), s))
        while s + window < e0:
            s += stride
            out.append((s, min(s + window, e0), s + window - stride))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def position_bucket(position: np.ndarray, num_buckets: int = 48) -> np.ndarray:
    """Absolute position -> bucket: exact below 16, then 4 buckets per doubling."""
    p = np.asarray(position, dtype=np.float64)
    b = np.where(p < 16, p, 16 + np.floor(np.log2(np.maximum(p, 16) / 16) * 4))
    return np.minimum(b, num_buckets - 1).astype(np.int64)
