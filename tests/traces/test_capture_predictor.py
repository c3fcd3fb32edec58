"""The expert predictor on a tiny captured model: it takes the router's input hidden states (the
capture's ``.hidden.safetensors``) and the gate weights when the trace has them, uses a layer's
hidden state only for later layers, and refuses a trace that lacks the file it was trained on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="capture needs the [capture] extra (transformers)")
torch = pytest.importorskip("torch")

import tiny_moe  # noqa: E402  (tests/traces helper)

from tests.predictor_helpers import eval_ok, predictor_cli, train_tiny  # noqa: E402
from traces.capture import capture, hidden_path  # noqa: E402
from traces.format import read_trace  # noqa: E402

WORDS = ["why is the sky blue", "hello moe world", "12 + 30 = ", "the cat sat", "route me now",
         "experts and layers", "a b c d e f", "prefill then decode", "tiny model test",
         "what is 7 * 6", "blue green red", "load the cache"]


@pytest.mark.slow
def test_predictor_takes_hidden_states_of_a_capture(tmp_path):
    mdir = tmp_path / "model"
    tiny_moe.build("mixtral", mdir)
    prompts = tiny_moe.write_prompts(tmp_path / "p.jsonl",
                                     [{"prompt": w, "task": "chat"} for w in WORDS])
    out = tmp_path / "t.parquet"
    capture(mdir, prompts, out, max_new_tokens=3, ignore_eos=True, hidden_states=True,
            chunk_prompts=8, log=lambda s: None)
    tr = read_trace(out)
    assert hidden_path(out).exists() and tr.weights is not None
    ck = train_tiny(out, tmp_path / "train", "predictor.token.epochs=1", "predictor.prompt.epochs=1")
    tm = json.loads((ck / "config.json").read_text())["token_model"]
    assert tm["hidden_size"] == 32 and tm["gate_weights"] is True
    assert tm["prefill"]["hidden_size"] == tm["decode"]["hidden_size"] == 32

    # through the checkpoint: the hidden state of layer l reaches layers > l only
    from safetensors.numpy import load_file

    from sim.predictor import checkpoint
    from sim.predictor.data import Vocab
    from sim.predictor.token import encode, predict_token

    tok, _, _, cfg = checkpoint.load(ck)
    with torch.no_grad():  # a projection trained for one epoch may be near zero: make it count
        for head in (tok.prefill, tok.decode):
            head.hid_proj.weight.normal_(0.0, 1.0)
    vocab = Vocab.from_json_obj(cfg["vocab"])
    h = load_file(hidden_path(out))["hidden_states"]
    req = np.arange(len(tr.request_ids()))
    run_cfg = {"window": cfg["window"], "batch_tokens": cfg["batch_tokens"]}
    L = tr.num_layers

    def probs(hid: np.ndarray) -> np.ndarray:
        return predict_token(tok, encode(tr, vocab, 48, hid), req, tr.top_k, run_cfg,
                             prob_sums=True)[1]

    base = probs(h)
    last = h.copy()
    last[:, L - 1] = np.random.default_rng(0).normal(size=last[:, L - 1].shape)
    assert np.array_equal(base, probs(last))  # the last layer's hidden state predicts nothing
    first = h.copy()
    first[:, 0] = np.random.default_rng(1).normal(size=first[:, 0].shape)
    p1 = probs(first)
    assert np.array_equal(base[:, 0], p1[:, 0]) and not np.allclose(base[:, 1:], p1[:, 1:])

    # eval on the capture: both phases reported; the same trace without its hidden file: refused
    ev = tmp_path / "eval"
    eval_ok(ck, out, ev, "split=all", "staleness_periods=[1]")
    ph = json.loads((ev / "metrics.json").read_text())["token"]["phases"]
    assert set(ph) == {"overall", "prefill", "decode"}
    bare = tmp_path / "bare" / "t.parquet"
    bare.parent.mkdir()
    shutil.copy(out, bare)
    res = predictor_cli("eval", f"checkpoint={ck}", f"trace.path={bare}", "split=all",
                        "staleness_periods=[1]", f"hydra.run.dir={ev}")
    assert res.returncode == 2 and "hidden states" in res.stderr and "t.hidden.safetensors" in res.stderr
