"""Predictor checkpoints: a folder with safetensors weights plus one JSON config.

    DIR/token.safetensors      per-token model weights (mode phased: both heads, keys prefill.*
                               and decode.*)
    DIR/prompt.safetensors     per-prompt (eMoE-A) model weights
    DIR/baselines.safetensors  training statistics of the baselines (popularity, transitions)
    DIR/config.json            model configs, vocabulary, split, trace metadata, training record

Every file is written atomically; config.json is written last, so a folder with a config.json is
complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.common.files import atomic_write_bytes

FILES = ("token.safetensors", "prompt.safetensors", "baselines.safetensors", "config.json")


def save(directory: str | Path, token_model: Any, prompt_model: Any,
         baselines: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    from safetensors.torch import save as st_save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, model in (("token", token_model), ("prompt", prompt_model)):
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(st_save(state), d / f"{name}.safetensors")
    from safetensors.numpy import save as np_save

    atomic_write_bytes(np_save({k: np.ascontiguousarray(v) for k, v in baselines.items()}),
                       d / "baselines.safetensors")
    atomic_write_bytes(json.dumps(config, indent=1, ensure_ascii=False).encode(), d / "config.json")
    return d


def load_config(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        raise ConfigError(f"{d}: not a predictor checkpoint (no config.json); expected a folder "
                          f"written by 'moesim predictor train' (its run directory's checkpoint/)")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{cfg_path}: invalid JSON ({exc})") from None


def load(directory: str | Path) -> tuple[Any, Any, dict[str, np.ndarray], dict[str, Any]]:
    """(token model, prompt model, baseline statistics, config) from a checkpoint folder. The token
    model is a TokenPredictor, or for ``token_model.mode == "phased"`` (the default since the
    phased checkpoint) a PhasedPredictor with ``.prefill`` / ``.decode`` heads; both are scored by
    :func:`sim.predictor.token.predict_token`."""
    from safetensors.numpy import load_file as np_load
    from safetensors.torch import load_file

    from sim.predictor.model import PromptPredictor, make_token_model

    d = Path(directory)
    cfg = load_config(d)
    for f in FILES:
        if not (d / f).exists():
            raise ConfigError(f"{d}: checkpoint lacks {f}")
    tok = make_token_model(cfg["token_model"])  # a PhasedPredictor for mode phased
    tok.load_state_dict(load_file(str(d / "token.safetensors")))
    tok.eval()
    pr = PromptPredictor(cfg["prompt_model"])
    pr.load_state_dict(load_file(str(d / "prompt.safetensors")))
    pr.eval()
    return tok, pr, np_load(str(d / "baselines.safetensors")), cfg
