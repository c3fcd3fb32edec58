from __future__ import annotations

import json

import pytest

from kernels.peaks import peak_for_device
from kernels.tuning import (
    FfnConfig,
    config_path,
    default_ffn_config,
    get_ffn_config,
    load_ffn_configs,
    save_ffn_configs,
)
from sim.common.errors import ConfigError


def test_save_load_nearest_and_default(tmp_path):
    dev = "NVIDIA H100 80GB HBM3"
    table = {1: FfnConfig(16, 64, 128, 4, 4), 64: FfnConfig(32, 64, 64, 4, 3),
             1024: FfnConfig(64, 128, 64, 8, 3)}
    path = save_ffn_configs(table, 8, 4096, 14336, 2, "bfloat16", dev, tmp_path)
    assert path == config_path(8, 4096, 14336, 2, "torch.bfloat16", dev, tmp_path)
    assert path.name == "E=8,H=4096,N=14336,K=2,dtype=bfloat16,device=NVIDIA_H100_80GB_HBM3.json"
    assert load_ffn_configs(path) == table
    get = lambda t: get_ffn_config(8, 4096, 14336, 2, "bfloat16", dev, t, tmp_path)  # noqa: E731
    assert get(1) == table[1] and get(20) == table[1] and get(40) == table[64] and get(4096) == table[1024]
    # another device or shape: no file -> the default
    other = get_ffn_config(8, 4096, 14336, 2, "bfloat16", "NVIDIA H200", 3, tmp_path)
    assert other == default_ffn_config(6, 8)
    assert json.loads(path.read_text())["meta"]["device"] == dev


def test_malformed_file_names_file_and_key(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"configs": {"16": {"block_m": 24, "block_n": 64, "block_k": 64,
                                                 "num_warps": 4, "num_stages": 3}}}))
    with pytest.raises(ConfigError, match=r"bad.json: configs\['16'\].*block_m"):
        load_ffn_configs(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_ffn_configs(p)
    p.write_text(json.dumps({"configs": {"x": {}}}))
    with pytest.raises(ConfigError, match="token count"):
        load_ffn_configs(p)


def test_peak_table():
    h100 = peak_for_device("NVIDIA H100 80GB HBM3")
    assert h100.hbm_bytes_per_s == 3.35e12 and h100.bf16_flop_per_s == 989e12
    h200 = peak_for_device("NVIDIA H200")
    assert h200.hbm_bytes_per_s == 4.8e12 and h200.bf16_flop_per_s == 989e12
    assert peak_for_device("NVIDIA H100 PCIe") is None
    assert peak_for_device("NVIDIA A100-SXM4-80GB") is None
