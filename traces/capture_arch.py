"""The MoE architectures ``moesim trace capture`` supports: where each keeps its router, which router
function it uses (see :mod:`traces.routing`), its parameters and its shared experts.

The capture hooks the router module itself (every supported architecture in transformers >= 5 has
one whose forward returns ``(router_logits, weights, ids)``), so the recorded ids and weights are
the ones the model used; the router function here re-derives them from the logits as a check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sim.common.errors import MoesimError


@dataclass(frozen=True)
class Arch:
    model_type: str
    name: str
    config_class: str  # transformers config class; the architecture is supported where it exists
    router_class: str  # the module whose forward hook records (logits, weights, ids)
    routing: str  # traces.routing function
    routing_text: str


_SOFTMAX_TOPK_NORM_IFF = "softmax, top-k, renormalised iff norm_topk_prob"

ARCHS: dict[str, Arch] = {a.model_type: a for a in [
    Arch("mixtral", "Mixtral", "MixtralConfig", "MixtralTopKRouter", "softmax_topk",
         "softmax, top-k, renormalised"),
    Arch("qwen2_moe", "Qwen2-MoE", "Qwen2MoeConfig", "Qwen2MoeTopKRouter", "softmax_topk",
         _SOFTMAX_TOPK_NORM_IFF),
    Arch("qwen3_moe", "Qwen3-MoE", "Qwen3MoeConfig", "Qwen3MoeTopKRouter", "softmax_topk",
         _SOFTMAX_TOPK_NORM_IFF),
    Arch("olmoe", "OLMoE", "OlmoeConfig", "OlmoeTopKRouter", "softmax_topk",
         _SOFTMAX_TOPK_NORM_IFF),
    Arch("deepseek_v3", "DeepSeek-V3", "DeepseekV3Config", "DeepseekV3TopkRouter", "deepseek_v3",
         "sigmoid + e_score_correction_bias for the choice, group-limited top-k, weights from the "
         "unbiased scores (renormalised iff norm_topk_prob) x routed_scaling_factor"),
    Arch("deepseek_v2", "DeepSeek-V2", "DeepseekV2Config", "DeepseekV2TopkRouter", "deepseek_v2",
         "softmax, greedy or group-limited top-k, x routed_scaling_factor"),
    Arch("gpt_oss", "GPT-OSS", "GptOssConfig", "GptOssTopKRouter", "topk_softmax",
         "top-k of the logits (router bias included), softmax over the k"),
    Arch("phimoe", "Phi-MoE", "PhimoeConfig", "PhimoeTopKRouter", "sparsemixer",
         "sparsemixer top-2 (eval): argmax, masked softmax weights"),
]}


def installed_archs() -> dict[str, Arch]:
    """The supported architectures whose config class the installed transformers provides."""
    import transformers

    return {k: a for k, a in ARCHS.items() if hasattr(transformers, a.config_class)}


def supported_line() -> str:
    try:
        names = [a.name for a in installed_archs().values()]
    except ImportError:
        names = [a.name for a in ARCHS.values()]
    return ", ".join(names)


def arch_for(model_type: Any, where: str) -> Arch:
    """The Arch of ``model_type`` (config.json's ``model_type``), or a one-line refusal."""
    archs = installed_archs()
    if model_type not in archs:
        raise MoesimError(f"{where}: model_type {model_type!r} is not supported by moesim trace capture; "
                          f"supported: {supported_line()}")
    return archs[model_type]


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def find_routers(model: Any, arch: Arch) -> list[tuple[int, Any]]:
    """(decoder layer index, router module) for every MoE layer, in layer order."""
    found = []
    for name, mod in model.named_modules():
        if type(mod).__name__ == arch.router_class:
            m = _LAYER_RE.search(name)
            if m is None:
                raise MoesimError(f"router {name!r} is not inside a numbered decoder layer")
            found.append((int(m.group(1)), mod))
    if not found:
        raise MoesimError(f"no {arch.router_class} module in the model; this transformers version "
                          f"builds {arch.name} differently from what moesim expects")
    found.sort(key=lambda x: x[0])
    return found


def expert_bytes_of(model: Any, layer: int, num_experts: int) -> int | None:
    """Bytes of one routed expert of decoder layer ``layer``: the parameters of that layer's
    ``experts`` module (fused (E, ...) tensors in transformers >= 5) divided by E; None if absent."""
    for name, mod in model.named_modules():
        m = _LAYER_RE.search(name)
        if m and int(m.group(1)) == layer and name.endswith(".experts"):
            total = sum(p.numel() * p.element_size() for p in mod.parameters())
            return int(total // num_experts) if total else None
    return None


def num_experts_of(router: Any) -> int:
    return int(router.weight.shape[0])


def router_params(arch: Arch, router: Any, config: Any) -> dict[str, Any]:
    """The parameters :func:`traces.routing.route` needs for this router."""
    k = int(config.num_experts_per_tok)
    if arch.routing == "softmax_topk":
        renorm = True if arch.model_type == "mixtral" else bool(config.norm_topk_prob)
        return {"top_k": k, "renorm": renorm}
    if arch.routing == "deepseek_v3":
        return {"top_k": k, "bias": router.e_score_correction_bias.detach().float().cpu().numpy(),
                "n_group": int(config.n_group), "topk_group": int(config.topk_group),
                "norm_topk_prob": bool(config.norm_topk_prob),
                "routed_scaling_factor": float(config.routed_scaling_factor)}
    if arch.routing == "deepseek_v2":
        return {"top_k": k, "topk_method": str(config.topk_method), "n_group": config.n_group,
                "topk_group": config.topk_group, "routed_scaling_factor": float(config.routed_scaling_factor)}
    if arch.routing == "topk_softmax":
        return {"top_k": k}
    if arch.routing == "sparsemixer":
        return {"top_k": 2, "jitter_eps": float(config.router_jitter_noise)}
    raise MoesimError(f"no router parameters for {arch.routing!r}")


def shared_experts(arch: Arch, config: Any) -> dict[str, Any]:
    """Experts every token uses besides the routed ones (not in the trace's expert ids)."""
    if arch.model_type in ("deepseek_v3", "deepseek_v2"):
        return {"count": int(config.n_shared_experts or 0),
                "intermediate_size": int(config.moe_intermediate_size) * int(config.n_shared_experts or 0),
                "gated": False}
    if arch.model_type == "qwen2_moe":
        return {"count": 1, "intermediate_size": int(config.shared_expert_intermediate_size),
                "gated": True}  # sigmoid(shared_expert_gate(x)) scales it
    return {"count": 0}
