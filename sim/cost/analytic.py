"""The analytic roofline cost model, built from the hardware, the model and the parallel layout.

Every kernel is ``launch + max(flops / (peak * flops_efficiency), bytes / (hbm * hbm_efficiency))``
with the constants of a :class:`~sim.world.config.HardwareConfig` (each cited in its YAML under
``conf/hardware/``) and the shapes of a :class:`~sim.world.config.ModelConfig` (its ``config.json``).
A layer is priced as the kernels a serving engine runs for it (vLLM / SGLang, CUDA graphs):

- attention block: the QKV / output projections and shared experts as GEMMs over the weights
  this GPU holds (sharded by tensor parallelism), then FlashAttention: FLOPs ``4 x heads x
  head_dim`` per (query, key) pair, the KV cache read once per query tile of
  :data:`ATTENTION_TILE_TOKENS` tokens (FlashAttention-2/3 stream K/V once per tile of queries,
  not once per query); MLA reads its compressed latent, which TP does not split;
- routed experts: one fused-MoE launch per layer per GPU (vLLM ``fused_moe``: a grouped GEMM
  over the experts that have tokens), each expert's tokens padded to a block of
  :data:`MOE_BLOCK_TOKENS` (``moe_align_block_size``), so efficiency falls with few tokens per
  expert; the weights of every active expert are read once;
- collectives: all-to-all (EP dispatch/combine across attention data-parallel ranks; the
  simulator times it on the network's links instead, :mod:`sim.world.network`) and, with
  tensor parallelism, two all-reduces per layer, each ``latency + 2 (n-1)/n bytes / bandwidth``
  (ring) on NVLink (or the network across nodes);
- per iteration: a fixed overhead (``hardware.iteration_overhead_s`` plus the serving engine's
  ``engine.iteration_overhead_s``, ``conf/engine``), the embedding
  gather, the dense (non-MoE) layers and the LM head over the sequences that sample a token.

Copies are ``latency + bytes / bandwidth``; per-expert copy setup is ``host_copy_overhead_s``.
The bandwidth is the GPU's link capped by the host's PCIe slot and scaled for pageable memory
(:func:`sim.world.offload_config.host_link_bytes_per_s`).

Quantised weights (``model.expert_bits`` / ``model.dense_bits``, the ``quant=`` group) are read at
their stored size; a kernel that unpacks them to the dtype first (``model.dequant=unpack``) also
writes and reads the dtype's bytes per parameter; a fused one (``fused``) reaches
``model.dequant_efficiency`` of the memory-bound rate.

An expert computed on the host CPU (``offload.expert_exec``, :meth:`AnalyticCost.cpu_expert_s`):
``max(flops / (host FLOP/s x efficiency), stored bytes / (host memory bandwidth x efficiency))``,
its tokens' hidden states crossing the host link both ways (:meth:`AnalyticCost.cpu_transfer_s`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.world.config import HardwareConfig, ModelConfig
from sim.world.model import attention_params, dense_param_bytes, dtype_bytes, expert_weight_bytes
from sim.world.offload_config import HostConfig, OffloadConfig, host_link_bytes_per_s

#: FlashAttention query tile: FA2's forward uses 128-row query blocks for head_dim <= 128 on
#: SM80/SM90 (flash-attention csrc/flash_attn/src/flash_fwd_launch_template.h), FA3 128 too
ATTENTION_TILE_TOKENS = 128
#: fused-MoE token block: vLLM's fused_moe pads each expert's tokens to BLOCK_SIZE_M (16 in the
#: small-batch default config, vllm/model_executor/layers/fused_moe/fused_moe.py get_default_config)
MOE_BLOCK_TOKENS = 16
#: kernel launches per fused-MoE layer: align/sort, the w13 grouped GEMM, SiLU-and-mul, the w2
#: grouped GEMM, the top-k weighted sum (vLLM fused_experts)
MOE_LAUNCHES = 5
#: moe_s sums only the active expert instances from this many (a large replica's split)
_SPARSE_MOE = 4096
#: kernel launches per attention block: norm, QKV GEMM, rotary + cache write, attention, output GEMM
#: (+ residual add / norm fused); shared experts add two GEMMs
ATTENTION_LAUNCHES = 5
#: activation passes over the hidden state per layer that are memory bound (norms, residual adds,
#: rotary, casts), each reading and writing tokens x hidden in bf16
ELEMENTWISE_PASSES = 6


@dataclass(frozen=True)
class Parallel:
    """How a replica's ``gpus`` split the work: ``tp`` tensor-parallel ranks per attention group
    (``gpus / tp`` data-parallel attention groups), experts sharded by TP (``moe_tp``) or placed
    whole by EP."""

    gpus: int = 1
    tp: int = 1
    moe_tp: bool = False
    inter_node: bool = False

    @property
    def dp(self) -> int:
        return max(1, self.gpus // self.tp)


class AnalyticCost:
    def __init__(self, model: ModelConfig, hw: HardwareConfig, parallel: Parallel | None = None,
                 engine_overhead_s: float = 0.0, host: HostConfig | None = None,
                 offload: OffloadConfig | None = None, layer_overhead_s: float = 0.0) -> None:
        self.model, self.hw = model, hw
        #: fixed host time per iteration: the host's (``hardware.iteration_overhead_s``) plus the
        #: serving engine's (``engine.iteration_overhead_s``, conf/engine)
        self.iteration_overhead_s = hw.iteration_overhead_s + engine_overhead_s
        #: the engine's host time per MoE layer (``engine.layer_overhead_s``: eager dispatch)
        self.layer_overhead_s = layer_overhead_s
        self.par = par = parallel or Parallel()
        self.wbytes = dtype_bytes(model.dtype)
        self.flops_s = hw.bf16_flops * hw.flops_efficiency * (2.0 if model.dtype == "fp8" else 1.0)
        self.hbm_s = hw.hbm_bytes_per_s * hw.hbm_efficiency
        self.host = host or HostConfig()
        self.host_link_bytes_per_s = host_link_bytes_per_s(hw.host_link_bytes_per_s, self.host,
                                                           offload or OffloadConfig())
        self.host_link_latency_s = hw.host_link_latency_s
        self.host_copy_overhead_s = hw.host_copy_overhead_s
        h, i = model.hidden_size, model.expert_intermediate_size
        self.expert_shards = par.tp if par.moe_tp else 1
        #: HBM bytes a kernel reads (and writes) per parameter of a stored weight: a quantised one
        #: at its stored size over the kernel's efficiency, plus the dtype written and read again
        #: when unpacked first; an unquantised one at the dtype's size
        def read(stored: float, quantised: bool) -> float:
            if not quantised or model.dequant == "none":
                return stored
            unpack = 2.0 * self.wbytes if model.dequant == "unpack" else 0.0
            return stored / model.dequant_efficiency + unpack

        self._expert_read = read(expert_weight_bytes(model), model.expert_bits > 0)
        self.dense_read = read(dense_param_bytes(model), model.dense_bits > 0)
        self._expert_weight_bytes = 3.0 * h * i * self._expert_read / self.expert_shards
        #: bytes of one expert as stored in host memory (what a CPU kernel streams)
        self._host_expert_bytes = 3.0 * h * i * expert_weight_bytes(model)
        self._expert_flops_per_token = 2.0 * 3 * h * i / self.expert_shards
        #: bf16 activations in and out of each expert, plus the intermediate written and read
        self._act_bytes_per_token = 2.0 * h * 2 + 2.0 * 2 * i * 2 / self.expert_shards
        self._attn_params = attention_params(model)
        self._shared_params = 3.0 * h * i * model.shared_experts
        mla = model.attention == "mla"
        kv_dim = (model.kv_lora_rank + model.qk_rope_head_dim) if mla else \
            2 * model.num_kv_heads * model.head_dim
        # TP splits KV heads (replicated past num_kv_heads); MLA's latent is replicated
        kv_split = 1 if mla else min(par.tp, max(1, model.num_kv_heads))
        self._kv_bytes_per_ctx = kv_dim * self.wbytes / kv_split
        qk_dim = (model.qk_nope_head_dim + model.qk_rope_head_dim) if mla else model.head_dim
        #: score + value flops per (query token, context token), all heads
        self._attn_flops_per_pair = 2.0 * model.num_heads * (qk_dim + (model.v_head_dim or qk_dim))

    # -- primitives -----------------------------------------------------------------------------
    def _roof(self, flops: float, nbytes: float, launches: int = 1) -> float:
        return launches * self.hw.kernel_latency_s + max(flops / self.flops_s, nbytes / self.hbm_s)

    def _link(self) -> tuple[float, float]:
        hw = self.hw
        return (hw.network_bytes_per_s, hw.network_latency_s) if self.par.inter_node else \
            (hw.nvlink_bytes_per_s, hw.nvlink_latency_s)

    # -- the protocol ---------------------------------------------------------------------------
    def gate_s(self, tokens: int) -> float:
        m = self.model
        t = tokens / self.par.dp
        return self._roof(2.0 * t * m.hidden_size * m.num_experts,
                          m.hidden_size * m.num_experts * self.wbytes + t * m.hidden_size * 2)

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        """One expert alone (its own launch): what the table model measures per expert."""
        t = np.asarray(tokens, dtype=np.float64)
        compute = t * (self._expert_flops_per_token / self.flops_s)
        memory = (self._expert_weight_bytes + t * self._act_bytes_per_token) / self.hbm_s
        return np.where(t > 0, self.hw.kernel_latency_s + np.maximum(compute, memory), 0.0)

    def moe_s(self, tokens: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
        """Fused MoE: per group (a layer on a GPU) one launch sequence over its active experts.

        ``tokens`` (N,) tokens of each expert instance, ``group`` (N,) its group (any shape of N
        elements, a broadcast view included); returns (groups,). Many instances (a large
        replica's (L, E, G) split, mostly idle): only the active ones are summed, the same
        floats (bincount adds in index order, and an idle instance adds exact zeros)."""
        t = np.asarray(tokens)
        g = np.asarray(group)
        if t.size >= _SPARSE_MOE:  # the active ones found before the cast (the same nonzeros)
            t = t.ravel()
            nz = np.flatnonzero(t)
            t = t[nz].astype(np.float64, copy=False)
            g = g[np.unravel_index(nz, g.shape)] if g.ndim > 1 else g[nz]
        else:
            t = t.astype(np.float64, copy=False).ravel()
        padded = np.ceil(t / MOE_BLOCK_TOKENS) * MOE_BLOCK_TOKENS
        active = (t > 0).astype(np.float64)
        g = g.ravel()
        flops = np.bincount(g, weights=padded, minlength=groups) * self._expert_flops_per_token
        tok = np.bincount(g, weights=t, minlength=groups)
        nbytes = np.bincount(g, weights=active, minlength=groups) * self._expert_weight_bytes + \
            tok * self._act_bytes_per_token
        has = tok > 0
        return np.where(has, MOE_LAUNCHES * self.hw.kernel_latency_s +
                        np.maximum(flops / self.flops_s, nbytes / self.hbm_s), 0.0)

    def _attention_block(self, tokens: float, pairs: float, kv_tokens: float, params: float,
                         launches: int, gpus: int) -> float:
        """One attention block on one GPU of ``gpus``: ``tokens`` / ``pairs`` / ``kv_tokens`` of
        the whole replica's batch; ``params`` the block's GEMM weights before TP."""
        tp = min(self.par.tp, gpus)
        dp = max(1, gpus // tp)
        t_gpu = tokens / dp  # the tokens of this GPU's data-parallel group
        gemm = self._roof(2.0 * params * tokens / gpus,
                          params * self.dense_read / tp + t_gpu * self.model.hidden_size * 2 * 2,
                          launches - 1)
        attn = self._roof(self._attn_flops_per_pair * pairs / gpus,
                          kv_tokens / dp * self._kv_bytes_per_ctx)
        elementwise = ELEMENTWISE_PASSES * t_gpu * self.model.hidden_size * 2 * 2 / self.hbm_s
        return gemm + attn + elementwise

    def attention_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    shards: int, kv_tokens: int | None = None) -> float:
        tokens = prefill_tokens + decode_tokens
        if tokens == 0:
            return 0.0
        kv = context_tokens if kv_tokens is None else kv_tokens
        shared = 2 if self.model.shared_experts else 0
        block = self._attention_block(tokens, context_tokens, kv,
                                      self._attn_params + self._shared_params,
                                      ATTENTION_LAUNCHES + shared, max(1, shards))
        return block + self.layer_overhead_s if self.layer_overhead_s else block

    def all_reduce_s(self, nbytes: float, gpus: int) -> float:
        """One ring all-reduce of ``nbytes`` over ``gpus`` GPUs (0 on one GPU)."""
        if gpus <= 1:
            return 0.0
        bw, lat = self._link()
        return lat + 2.0 * (gpus - 1) / gpus * nbytes / bw

    def layer_collectives_s(self, tokens: int) -> float:
        """Tensor parallelism's collectives of one MoE layer: the attention output all-reduce and
        the MoE output all-reduce (bf16 hidden states of this TP group's tokens)."""
        par = self.par
        if par.tp <= 1 or tokens == 0:
            return 0.0
        nbytes = tokens / par.dp * self.model.hidden_size * 2.0
        return 2.0 * self.all_reduce_s(nbytes, par.tp)

    def iteration_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    kv_tokens: int, sequences: int) -> float:
        """What an iteration costs besides its MoE layers: the engine's fixed overhead, the
        embedding gather, the dense layers (attention + MLP, with their all-reduces) and the LM
        head over the ``sequences`` that sample a token (vocab-parallel under TP)."""
        tokens = prefill_tokens + decode_tokens
        if tokens == 0:
            return 0.0
        m, par = self.model, self.par
        h = m.hidden_size
        t_gpu = tokens / par.dp
        out = self.iteration_overhead_s + self._roof(0.0, t_gpu * h * 2 * 2)  # embedding gather
        if m.dense_layers:
            mlp = 3.0 * h * m.dense_intermediate_size
            per = self._attention_block(tokens, context_tokens, kv_tokens, self._attn_params,
                                        ATTENTION_LAUNCHES, par.gpus) + \
                self._roof(2.0 * mlp * tokens / par.gpus, mlp * self.dense_read / par.tp, 2) + \
                self.layer_collectives_s(tokens)
            out += m.dense_layers * per
        lm = float(m.vocab_size) * h
        out += self._roof(2.0 * lm * sequences / par.gpus, lm * self.wbytes / par.tp +
                          sequences / par.dp * m.vocab_size * 4.0 / par.tp, 2)
        return out

    def copy_s(self, nbytes: float) -> float:
        return self.host_link_latency_s + nbytes / self.host_link_bytes_per_s

    def cpu_expert_s(self, tokens: np.ndarray) -> np.ndarray:
        """Each expert of ``tokens`` (N,) computed on the host CPU, one after another with every
        core on it (llama.cpp, kTransformers): the larger of its GEMMs' FLOPs at the host's rate
        for its ISA and its stored weights streamed from host memory; 0 for no tokens."""
        host = self.host
        flops_s = host.flops_per_s[host.isa] * host.flops_efficiency
        mem_s = host.memory_bytes_per_s * host.memory_efficiency
        t = np.asarray(tokens, dtype=np.float64)
        compute = t * (2.0 * 3 * self.model.hidden_size * self.model.expert_intermediate_size / flops_s)
        return np.where(t > 0, np.maximum(compute, self._host_expert_bytes / mem_s), 0.0)

    def cpu_transfer_s(self, tokens: float) -> float:
        """The hidden states of ``tokens`` tokens sent to the host and their expert outputs sent
        back (bf16, one copy each way on the host link); 0 for none."""
        if tokens <= 0:
            return 0.0
        return 2.0 * self.copy_s(tokens * self.model.hidden_size * 2.0)

    def all_to_all_s(self, bytes_per_gpu: float, gpus: int, inter_node: bool) -> float:
        """One all-to-all of ``bytes_per_gpu`` spread evenly over ``gpus`` (the table model's
        fallback). The simulator does not call it: it times each layer's all-to-all on the
        network's links from the actual traffic (:mod:`sim.world.network`)."""
        if gpus <= 1:
            return 0.0
        hw = self.hw
        bw, lat = (hw.network_bytes_per_s, hw.network_latency_s) if inter_node else \
            (hw.nvlink_bytes_per_s, hw.nvlink_latency_s)
        return lat + bytes_per_gpu * (gpus - 1) / gpus / bw

    def report(self) -> dict:
        return {}


def kv_read_tokens(start: np.ndarray, alloc: np.ndarray) -> int:
    """KV tokens FlashAttention reads for a batch: per request, each query tile of
    :data:`ATTENTION_TILE_TOKENS` of its chunk (``alloc`` tokens from position ``start``) streams
    the KV up to the tile's last query once (causal). A decode token reads ``start + 1``."""
    a = np.asarray(alloc, dtype=np.int64)
    s = np.asarray(start, dtype=np.int64)
    tiles = -(-a // ATTENTION_TILE_TOKENS)  # (B,)
    full = np.maximum(tiles - 1, 0)
    # tile j (0-based) ends at min((j + 1) * tile, a): sum over tiles of those ends
    ends = ATTENTION_TILE_TOKENS * full * (full + 1) // 2 + a * (tiles > 0)
    return int((tiles * s + ends).sum())


__all__ = ["ATTENTION_TILE_TOKENS", "MOE_BLOCK_TOKENS", "AnalyticCost", "Parallel", "kv_read_tokens"]
