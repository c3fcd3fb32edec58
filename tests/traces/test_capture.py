"""``moesim trace capture`` on tiny random checkpoints of every supported architecture: the recorded
ids and weights equal the architecture's router function applied to the router logits the model
reports itself (``output_router_logits=True``, one forward pass over the whole sequence, no cache),
for prefill and decode tokens alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="capture needs the [capture] extra (transformers)")
torch = pytest.importorskip("torch")

import tiny_moe  # noqa: E402  (tests/traces helper)

from sim.app.cli import main as moesim  # noqa: E402
from traces.capture import capture, hidden_path  # noqa: E402
from traces.capture_arch import ARCHS, find_routers, installed_archs, router_params  # noqa: E402
from traces.format import read_trace  # noqa: E402
from traces.routing import route, same_sets  # noqa: E402

PROMPTS = [{"prompt": "hello moe world", "task": "chat", "id": "a"},
           {"prompt": "why is the sky blue?", "task": "qa"},
           {"prompt": "12 + 30 = ", "id": 7}]
NEW = 5


def _independent_check(model_dir, trace):
    """Rebuild each request's forwarded tokens from the trace text, run the saved checkpoint once
    over them with output_router_logits=True and compare."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    arch = installed_archs()[model.config.model_type]
    routers = find_routers(model, arch)
    params = [router_params(arch, mod, model.config) for _, mod in routers]
    b = trace.request_bounds()
    for r in range(len(b) - 1):
        rows = slice(b[r], b[r + 1])
        text = trace.tokens["text"].iloc[rows].tolist()
        vocab = tok.get_vocab()
        assert all(t in vocab for t in text), "every token text maps back to one vocabulary entry"
        ids = [vocab[t] for t in text]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_router_logits=True, use_cache=False)
        phase = trace.tokens["phase"].iloc[rows].to_numpy()
        P = int((phase == "prefill").sum())
        assert P == len(tok(PROMPTS[r]["prompt"]).input_ids) and (phase[P:] == "decode").all()
        # greedy decode: each decode token is the argmax after the token before it
        assert out.logits[0, P - 1:-1].argmax(-1).tolist() == ids[P:]
        assert len(out.router_logits) == trace.num_layers
        for l, lg in enumerate(out.router_logits):
            ref_ids, ref_w = route(arch.routing, lg.float().numpy(), params[l])
            got_ids = trace.experts[rows, l].astype(np.int64)
            assert same_sets(ref_ids, got_ids).all(), (arch.name, r, l)
            order_ref, order_got = np.argsort(ref_ids, axis=1), np.argsort(got_ids, axis=1)
            np.testing.assert_allclose(np.take_along_axis(trace.weights[rows, l], order_got, 1),
                                       np.take_along_axis(ref_w, order_ref, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_capture_matches_router_logits(model_type, tmp_path):
    if model_type not in installed_archs():
        pytest.skip(f"transformers {transformers.__version__} has no {ARCHS[model_type].config_class}")
    mdir = tmp_path / "model"
    tiny_moe.build(model_type, mdir)
    prompts = tiny_moe.write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "trace.parquet"
    r = capture(mdir, prompts, out, max_new_tokens=NEW, ignore_eos=True, chunk_prompts=2, log=lambda s: None)
    tr = read_trace(out)
    assert tr.request_ids() == ["a", "p2", "7"]
    assert tr.request_tasks() == ["chat", "qa", "default"]
    assert (tr.tokens["phase"] == "decode").sum() == 3 * (NEW - 1)
    assert tr.meta.extra["router_check"]["mismatched"] == 0
    assert tr.meta.extra["architecture"] == ARCHS[model_type].name
    cfg = json.loads((mdir / "config.json").read_text())
    if model_type.startswith("deepseek"):
        assert tr.meta.layer_ids == [1, 2]  # layer 0 is dense (first_k_dense_replace=1)
        assert tr.meta.extra["shared_experts"]["count"] == cfg["n_shared_experts"]
    else:
        assert tr.meta.layer_ids == [0, 1]
    assert not (tmp_path / "trace.parquet.parts").exists() and r.resumed_prompts == 0
    _independent_check(mdir, tr)


def test_hidden_states_side_file_gives_router_logits(tmp_path):
    from safetensors.numpy import load_file

    mdir = tmp_path / "model"
    model = tiny_moe.build("mixtral", mdir)
    prompts = tiny_moe.write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    out = tmp_path / "t.parquet"
    capture(mdir, prompts, out, max_new_tokens=3, ignore_eos=True, hidden_states=True, chunk_prompts=1,
            log=lambda s: None)
    tr = read_trace(out)
    h = load_file(hidden_path(out))["hidden_states"]
    assert h.dtype == np.float16 and h.shape == (tr.num_tokens, tr.num_layers, 32)
    for l, (_, gate) in enumerate(find_routers(model, ARCHS["mixtral"])):
        logits = h[:, l].astype(np.float32) @ gate.weight.detach().numpy().T  # (T, E)
        ids, _ = route("softmax_topk", logits, {"top_k": 2, "renorm": True})
        s = np.sort(logits, axis=1)
        clear = (s[:, -2] - s[:, -3]) > 0.05  # fp16 inputs: skip near-ties at the k-th place
        assert clear.mean() > 0.8
        assert same_sets(ids[clear], tr.experts[clear, l].astype(np.int64)).all()


def test_cli_capture_then_stats(tmp_path, capsys):
    mdir = tmp_path / "model"
    tiny_moe.build("qwen2_moe", mdir)
    prompts = tiny_moe.write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "t.parquet"
    assert moesim(["trace", "capture", str(mdir), "--prompts", str(prompts), "-o", str(out),
                   "--max-new-tokens", "4", "--ignore-eos"]) == 0
    assert "Qwen2-MoE" in capsys.readouterr().out
    assert moesim(["trace", "stats", str(out)]) == 0
    assert "tokens" in capsys.readouterr().out
    from sim.replay.cache import run_replay  # the cache replay takes a captured trace like any other

    tr = read_trace(out)
    assert tr.meta.extra["expert_bytes"] == 3 * 32 * 16 * 4  # gate, up, down of 32x16, float32
    recs = run_replay(tr, ["lru"], [0.5], expert_bytes=tr.meta.extra["expert_bytes"])
    assert recs[0]["accesses"] == tr.num_tokens * tr.num_layers * tr.top_k


def test_prefill_only_when_budget_is_one(tmp_path):
    mdir = tmp_path / "model"
    tiny_moe.build("olmoe", mdir)
    prompts = tiny_moe.write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    r = capture(mdir, prompts, tmp_path / "t.parquet", max_new_tokens=1, log=lambda s: None)
    assert (r.trace.tokens["phase"] == "prefill").all()
    assert r.trace.num_tokens == len(PROMPTS[0]["prompt"])


# ---- refusals: one line, exit 2, no output ------------------------------------------------------
def _bad_model(tmp_path, kind):
    d = tmp_path / "m"
    if kind == "unsupported":
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    elif kind == "no config":
        d.mkdir()
    elif kind == "config not json":
        d.mkdir()
        (d / "config.json").write_text("{oops")
    return d


@pytest.mark.parametrize("kind", ["unsupported", "no config", "config not json", "missing folder"])
def test_capture_refuses_bad_models(kind, tmp_path, capsys):
    d = _bad_model(tmp_path, kind)
    prompts = tiny_moe.write_prompts(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "o.parquet"
    rc = moesim(["trace", "capture", str(d), "--prompts", str(prompts), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("moesim: error: "), err
    if kind == "unsupported":
        assert "'llama' is not supported" in err[0] and "Mixtral" in err[0] and "DeepSeek-V3" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("content,what", [
    ("", "empty"), ("not json\n", "not valid JSON"), ('{"task": "x"}\n', "prompt"),
    ('{"prompt": ""}\n', "prompt"), ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": "1"}\n', "twice"),
    ('["a"]\n', "object"), ('{"prompt": "a", "task": 3}\n', "task"),
])
def test_capture_refuses_bad_prompts(content, what, tmp_path, capsys):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    out = tmp_path / "o.parquet"
    rc = moesim(["trace", "capture", str(tmp_path), "--prompts", str(p), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and what in err[0] and "p.jsonl" in err[0], err
    assert not out.exists()
