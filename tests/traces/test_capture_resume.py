"""An interrupted capture keeps its complete parts and, rerun, resumes without a duplicate or a
missing token: the process is killed (SIGKILL) in the middle of a part, then the same command runs
again and its trace equals an uninterrupted capture's."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers", reason="capture needs the [capture] extra (transformers)")

import tiny_moe  # noqa: E402

from sim.app.cli import main as moesim  # noqa: E402
from traces.capture import KILL_ENV, capture  # noqa: E402
from traces.format import read_trace  # noqa: E402

PROMPTS = [{"prompt": f"prompt number {i} says {'ab' * i}", "task": "t" + str(i % 2)} for i in range(5)]


def _argv(mdir, prompts, out, new="3"):
    return ["trace", "capture", str(mdir), "--prompts", str(prompts), "-o", str(out),
            "--max-new-tokens", new, "--ignore-eos", "--chunk-prompts", "2", "--hidden-states"]


@pytest.mark.slow
def test_killed_capture_resumes_without_duplicates(tmp_path, capsys):
    mdir = tmp_path / "model"
    tiny_moe.build("deepseek_v3", mdir)
    prompts = tiny_moe.write_prompts(tmp_path / "p.jsonl", PROMPTS)
    ref_out = tmp_path / "ref.parquet"
    capture(mdir, prompts, ref_out, max_new_tokens=3, ignore_eos=True, chunk_prompts=2, hidden_states=True,
            log=lambda s: None)

    out = tmp_path / "t.parquet"
    env = {**os.environ, KILL_ENV: "3"}  # dies after the 3rd prompt: part 0 (2 prompts) complete
    r = subprocess.run([sys.executable, "-m", "sim", *_argv(mdir, prompts, out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    parts = tmp_path / "t.parquet.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part-00000.hidden.npy",
                                                       "part-00000.parquet"]
    assert read_trace(parts / "part-00000.parquet").request_ids() == ["p1", "p2"]
    assert not out.exists()

    # other settings are refused while the interrupted capture is there
    assert moesim(_argv(mdir, prompts, out, new="4")) == 2
    assert "max_new_tokens" in capsys.readouterr().err

    assert moesim(_argv(mdir, prompts, out)) == 0
    assert "resuming after 2 complete prompts" in capsys.readouterr().err
    assert not parts.exists()
    got, ref = read_trace(out), read_trace(ref_out)
    assert got.request_ids() == [f"p{i}" for i in range(1, 6)]
    assert not got.tokens.duplicated(["request_id", "position"]).any()
    pd.testing.assert_frame_equal(got.tokens, ref.tokens)
    np.testing.assert_array_equal(got.experts, ref.experts)
    np.testing.assert_array_equal(got.weights, ref.weights)
    from safetensors.numpy import load_file

    h_got = load_file(tmp_path / "t.hidden.safetensors")["hidden_states"]
    h_ref = load_file(tmp_path / "ref.hidden.safetensors")["hidden_states"]
    np.testing.assert_array_equal(h_got, h_ref)
