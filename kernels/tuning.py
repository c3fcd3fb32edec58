"""Launch configurations of the grouped FFN, tuned per (experts, sizes, dtype, device name).

One JSON file per (E, H, N, K, dtype, device) under ``kernels/configs/`` (vLLM's habit), named
``E=8,H=4096,N=14336,K=2,dtype=bfloat16,device=NVIDIA_H100_80GB_HBM3.json``::

    {"meta": {"experts": 8, "hidden": 4096, "ffn": 14336, "top_k": 2, "dtype": "bfloat16",
              "device": "NVIDIA H100 80GB HBM3", "written_by": "moesim kernels bench tune=true"},
     "configs": {"1": {"block_m": 16, "block_n": 64, "block_k": 128, "num_warps": 4, "num_stages": 4},
                 "64": {...}, "4096": {...}}}

Keys of ``configs`` are token counts T; a launch for T tokens uses the entry with the nearest key.
Without a file for the shape and device, :func:`default_ffn_config` is used. ``moesim kernels bench
tune=true`` writes these files (atomically).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from sim.common.errors import ConfigError

__all__ = [
    "FfnConfig",
    "CONFIG_DIR",
    "default_ffn_config",
    "config_path",
    "load_ffn_configs",
    "save_ffn_configs",
    "get_ffn_config",
    "device_slug",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class FfnConfig:
    """Tiles of the grouped GEMMs. block_m is also the alignment block size."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ConfigError(f"FfnConfig.{name} must be a power of two >= 16, got {v!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ConfigError(f"FfnConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ConfigError(f"FfnConfig.num_stages must be in [1, 8], got {self.num_stages!r}")


def default_ffn_config(num_slots: int, num_experts: int) -> FfnConfig:
    """Fallback tiles: small M blocks when experts see few tokens (decode), larger ones otherwise."""
    per_expert = num_slots / max(1, num_experts)
    if per_expert <= 16:
        return FfnConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    if per_expert <= 64:
        return FfnConfig(block_m=32, block_n=64, block_k=64, num_warps=4, num_stages=4)
    return FfnConfig(block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3)


def device_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3' (safe in file names)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", device_name.strip()).strip("_") or "unknown"


def config_path(experts: int, hidden: int, ffn: int, top_k: int, dtype: str, device_name: str,
                config_dir: Path | None = None) -> Path:
    d = CONFIG_DIR if config_dir is None else Path(config_dir)
    dtype = str(dtype).removeprefix("torch.")
    dev = device_slug(device_name)
    return d / f"E={experts},H={hidden},N={ffn},K={top_k},dtype={dtype},device={dev}.json"


def load_ffn_configs(path: Path) -> dict[int, FfnConfig]:
    """Token count -> config from one file; a malformed file raises ConfigError naming the key."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("configs"), dict) or not doc["configs"]:
        raise ConfigError(f"{path}: expected an object with a non-empty 'configs' object")
    out: dict[int, FfnConfig] = {}
    fields = set(FfnConfig.__dataclass_fields__)
    for key, val in doc["configs"].items():
        try:
            tokens = int(key)
        except ValueError:
            raise ConfigError(f"{path}: configs key {key!r} is not a token count") from None
        if not isinstance(val, dict) or set(val) != fields:
            raise ConfigError(f"{path}: configs[{key!r}] must have exactly the keys {sorted(fields)}")
        try:
            out[tokens] = FfnConfig(**val)
        except ConfigError as exc:
            raise ConfigError(f"{path}: configs[{key!r}]: {exc}") from None
    return out


def save_ffn_configs(configs: dict[int, FfnConfig], experts: int, hidden: int, ffn: int, top_k: int,
                     dtype: str, device_name: str, config_dir: Path | None = None) -> Path:
    from sim.common.files import atomic_write_bytes

    path = config_path(experts, hidden, ffn, top_k, dtype, device_name, config_dir)
    doc = {
        "meta": {"experts": experts, "hidden": hidden, "ffn": ffn, "top_k": top_k,
                 "dtype": str(dtype).removeprefix("torch."), "device": device_name,
                 "written_by": "moesim kernels bench tune=true"},
        "configs": {str(t): asdict(c) for t, c in sorted(configs.items())},
    }
    atomic_write_bytes((json.dumps(doc, indent=1) + "\n").encode(), path)
    return path


def get_ffn_config(experts: int, hidden: int, ffn: int, top_k: int, dtype: str, device_name: str,
                   num_tokens: int, config_dir: Path | None = None) -> FfnConfig:
    """The tuned config for the nearest token count, or the default when no file exists."""
    path = config_path(experts, hidden, ffn, top_k, dtype, device_name, config_dir)
    if not path.exists():
        return default_ffn_config(num_tokens * top_k, experts)
    table = load_ffn_configs(path)
    best = min(table, key=lambda t: (abs(t - num_tokens), t))
    return table[best]
