"""The expert predictor: split, vocabulary, metrics, baselines, training, CLI, eMoE policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.predictor.data import Vocab, multi_hot, split_prompts, top_m, windows
from sim.predictor.metrics import predict_previous_prompt, predict_transition, set_metrics
from tests.predictor_helpers import eval_ok, predictor_cli, synth_trace, train_tiny
from traces.format import RoutingTrace, write_trace


def test_split_is_by_prompt_deterministic_and_keeps_duplicates_together():
    tr = synth_trace()
    # make prompt p1 an exact copy of p0
    b = tr.request_bounds()
    n0 = b[1] - b[0]
    rows = np.concatenate([np.arange(b[0], b[1]), np.arange(b[0], b[1]), np.arange(b[2], b[-1])])
    dup = tr.take(rows)
    dup.tokens["request_id"] = ["p0"] * n0 + ["p1"] * n0 + list(tr.tokens["request_id"][b[2]:])
    a = split_prompts(dup, (0.6, 0.2, 0.2), seed=3)
    c = split_prompts(dup, (0.6, 0.2, 0.2), seed=3)
    assert all(np.array_equal(a[k], c[k]) for k in a)
    allr = np.concatenate(list(a.values()))
    assert sorted(allr.tolist()) == list(range(len(dup.request_ids())))
    where = {int(r): k for k, v in a.items() for r in v}
    assert where[0] == where[1]
    assert split_prompts(dup, (0.6, 0.2, 0.2), seed=4)["test"].tolist() != a["test"].tolist()


def test_windows_score_each_token_once_with_causal_context():
    b = np.array([0, 5, 25])
    w = windows(b, np.array([0, 1]), window=8)
    scored = np.concatenate([np.arange(s, e) for _, e, s in w])
    assert sorted(scored.tolist()) == list(range(25))
    for start, end, first in w:
        assert end - start <= 8 and start <= first < end
        if first > start:
            assert first - start >= 4  # at least window // 2 earlier tokens


def test_vocab_unknown_pieces_and_stable_ngrams():
    v = Vocab.build(np.array(["Ġthe", "Ġcat", "Ġthe"]), min_count=1, num_hash=64)
    tok, ng = v.encode(np.array(["Ġthe", "Ġdog"]))
    assert tok[0] == v.pieces.index("Ġthe") and tok[1] == 1  # <unk>
    assert (ng[1] > 0).any() and ng.max() < 64
    v2 = Vocab.from_json(v.to_json())
    assert np.array_equal(v2.encode(np.array(["Ġdog"]))[1], ng[1:])


def test_set_metrics_by_hand():
    true = np.array([[[0, 1]], [[2, 3]]])  # (N=2, L=1, K=2)
    pred = np.array([[[1, 5]], [[2, 3]]])
    m = set_metrics(pred, true, num_experts=8)
    assert m["f1"] == pytest.approx(3 / 4) and m["precision"] == m["recall"] == m["f1"]
    assert m["top1_accuracy"] == 1.0 and m["exact_set_accuracy"] == 0.5
    # negatives: 16 labels, 4 true; TN = 16 - TP(3) - FP(1) - FN(1) = 11
    assert m["f1_macro_binary"] == pytest.approx((6 / 8 + 22 / 24) / 2)


def test_baselines_previous_prompt_and_transition():
    freq = np.zeros((3, 2, 4))
    freq[0, :, 1] = 1
    freq[1, :, 2] = 1
    pop = np.array([[0, 0, 0, 5.0], [0, 0, 0, 5.0]])
    prev = predict_previous_prompt(freq, pop, 1)
    assert prev[:, 0, 0].tolist() == [3, 1, 2]
    trans = np.zeros((2, 4, 4))
    trans[1, 2, 0] = 7  # expert 2 at layer 0 -> expert 0 at layer 1
    t = predict_transition(trans, pop, multi_hot(np.array([[[2], [1]]]), 4).astype(float), 1)
    assert t[0, 0, 0] == 3 and t[0, 1, 0] == 0
    assert top_m(np.array([1.0, 3.0, 3.0]), 2).tolist() == [1, 2]


@pytest.mark.slow
def test_train_and_eval_cli_on_a_small_slice(tmp_path):
    """Trains the tiny predictor through the CLI on a synthetic trace and evaluates it: the
    per-token predictor must learn the piece -> experts map (beating every baseline)."""
    path = tmp_path / "synth.parquet"
    write_trace(synth_trace(num_prompts=60), path)
    ck = train_tiny(path, tmp_path / "train", "predictor.token.epochs=6")
    assert (ck / "token.safetensors").exists() and (ck / "config.json").exists()
    ev = tmp_path / "eval"
    eval_ok(ck, path, ev, "split=test", "staleness_periods=[1,4]")
    m = json.loads((ev / "metrics.json").read_text())
    for key in ("f1", "precision", "recall", "baselines_f1"):
        assert key in m
    assert set(m["baselines_f1"]) == {"popular", "previous_prompt", "transition"}
    assert m["f1"] > max(m["baselines_f1"].values())
    assert [r["period"] for r in m["staleness"]] == [1, 4]
    assert (ev / "staleness.png").exists() and (ev / "sensitivity.json").exists()
    assert m["size"]["token_params"] > 0 and m["time"]["token_s_per_prompt_call"] > 0

    # the eMoE policy loads the checkpoint lazily and charges its run time
    from sim.policies import PREFETCH
    from sim.policies.base import PrefetchContext

    pol = PREFETCH.make("emoe_learned", num_layers=4, num_experts=16, top_k=2,
                        checkpoint=str(ck), period=2, call_s=0.25)
    first = pol.on_request(PrefetchContext(request_id="a", request_index=0))
    assert all(len(v) == 16 for v in first.values()) and pol.cost_s() == 0.0
    pol.observe(PrefetchContext(request_id="a"), 0, np.array([1, 2]))
    plan = pol.on_request(PrefetchContext(request_id="b", request_index=2))
    assert pol.cost_s() == 0.25 and all(len(v) == 16 for v in plan.values())
    pol.on_request(PrefetchContext(request_id="c", request_index=3))
    assert pol.cost_s() == 0.0  # the standing prediction is reused between reruns

    # hooked into the cache replay and the simulator by name, like any prefetch policy
    from sim.replay.cache import replay_plain
    from traces.format import read_trace

    tr = read_trace(path)
    r = replay_plain(tr, "lru", 0.5, prefetch="emoe_learned",
                     prefetch_kwargs={"checkpoint": str(ck), "period": 2})
    assert r.prefetched > 0 and r.hits + r.misses == r.accesses

    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Simulation
    from sim.serving.binding import RoutingPool, bind
    from sim.serving.testing import StubCost, tiny_config, workload

    def simulate(call_s: float) -> dict:
        cfg = tiny_config(layers=tr.num_layers, experts=tr.num_experts, top_k=tr.top_k,
                          gpus_per_node=1, ep=1, budget_fraction=0.5, token_budget=64)
        cfg.policy.prefetch = "emoe_learned"
        cfg.policy.prefetch_args = {"checkpoint": str(ck), "period": 2, "call_s": call_s}
        rng = np.random.default_rng(0)
        pool = RoutingPool.from_trace(tr)
        wl = workload([0.0, 0.1, 0.2, 0.3], [5, 6, 4, 5], [3, 2, 3, 2])
        sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
        sim.run()
        return compute_metrics(sim)

    charged, free = simulate(0.5), simulate(0.0)
    assert charged["requests_completed"] == free["requests_completed"] == 4
    assert charged["prefetch"]["issued"] > 0
    assert charged["sim_time_s"] > free["sim_time_s"]  # the predictor's run time is charged


def test_eval_rejects_missing_checkpoint(tmp_path):
    path = tmp_path / "synth.parquet"
    write_trace(synth_trace(num_prompts=5), path)
    out = predictor_cli("eval", f"checkpoint={tmp_path / 'nope'}", f"trace.path={path}",
                        f"hydra.run.dir={tmp_path / 'ev'}", timeout=60)
    assert out.returncode == 2 and "not a predictor checkpoint" in out.stderr


def _tiny_layer_model(prev_token: str):
    import torch

    from sim.predictor.model import TokenPredictor

    torch.manual_seed(0)
    cfg = {"mode": "token_layers", "d_model": 16, "layers": 1, "heads": 2, "d_ff": 32,
           "dropout": 0.0, "num_layers": 5, "num_experts": 8, "vocab_size": 20, "num_hash": 30,
           "num_pos_buckets": 48, "layer_d_model": 16, "layer_layers": 2, "layer_heads": 2,
           "layer_d_ff": 32, "prev_token": prev_token}
    return TokenPredictor(cfg).eval()


@pytest.mark.parametrize("prev_token", ["lower", "same"])
def test_token_layers_sees_no_later_layer_and_no_later_token(prev_token):
    """Layer l's logits of token t must not change when this token's experts at layers >= l, or
    anything of later tokens, change; they must change when layer l-1 changes (it is used)."""
    import torch

    m = _tiny_layer_model(prev_token)
    g = torch.Generator().manual_seed(1)
    B, W, L, K, E = 2, 6, 5, 2, 8

    def rand_sets(n: int) -> torch.Tensor:
        return torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(n)])

    tok = torch.randint(2, 20, (B, W), generator=g)
    ng = torch.randint(0, 30, (B, W, 24), generator=g)
    pos = torch.arange(W).repeat(B, 1)
    has_prev = torch.ones(B, W, dtype=torch.bool)
    has_prev[:, 0] = False

    def run(tk: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return m(tk, ng, pos, experts=ex, prev_experts=torch.roll(ex, 1, 1), has_prev=has_prev)

    ex = rand_sets(B * W * L).view(B, W, L, K)
    base = run(tok, ex)
    l = 2
    ex2 = ex.clone()
    ex2[:, :, l:] = rand_sets(B * W * (L - l)).view(B, W, L - l, K)
    out2 = run(tok, ex2)
    # this token's layers >= l changed (and, through the roll, the previous token's)
    upto = l if prev_token == "same" else l + 1  # 'same' sees the previous token's layer l
    assert torch.equal(base[:, :, :upto], out2[:, :, :upto])
    assert not torch.allclose(base[:, :, l + 1:], out2[:, :, l + 1:])
    if prev_token == "same":  # only the previous token's layer l differs at layer l
        assert torch.equal(base[:, 0, :l + 1], out2[:, 0, :l + 1])
    # later tokens (pieces and experts) changed: tokens < 4 unchanged
    tok3, ex3 = tok.clone(), ex.clone()
    tok3[:, 4:] = 3
    ex3[:, 4:] = rand_sets(B * 2 * L).view(B, 2, L, K)
    assert torch.equal(base[:, :4], run(tok3, ex3)[:, :4])


def test_token_layers_learns_cross_layer_routing():
    """A trace where layer 0's experts are random per token and layer l's a fixed function of
    layer l-1's: the layer-causal model must predict layers 1.. well and layer 0 only at chance
    (it never sees layer 0's own experts)."""
    from sim.predictor.token import encode, predict_token, train_token

    rng = np.random.default_rng(0)
    L, E, K = 4, 16, 2
    base = synth_trace(num_prompts=60, L=L, E=E, K=K)
    ex = base.experts.astype(np.int64).copy()  # (T, L, K)
    perm = np.stack([rng.permutation(E) for _ in range(L)])  # (L, E)
    noise = rng.integers(0, E, size=len(ex))  # (T,) per-token random first-layer expert
    ex[:, 0, 0] = noise
    ex[:, 0, 1] = (noise + 1 + rng.integers(0, E - 1, size=len(ex))) % E
    for l in range(1, L):
        ex[:, l] = perm[l][ex[:, l - 1]]
    tr = RoutingTrace(ex.astype(np.int16), None, base.tokens, base.meta)
    parts = split_prompts(tr, (0.7, 0.1, 0.2), seed=0)
    vocab = Vocab.build(tr.tokens["text"].to_numpy(), 1, 64)
    mcfg = {"mode": "token_layers", "d_model": 16, "layers": 1, "heads": 2, "d_ff": 32,
            "dropout": 0.0, "num_layers": L, "num_experts": E, "vocab_size": len(vocab),
            "num_hash": 64, "num_pos_buckets": 48, "layer_d_model": 16, "layer_layers": 1,
            "layer_heads": 2, "layer_d_ff": 32, "prev_token": "lower"}
    cfg = {"model": mcfg, "window": 16, "batch_tokens": 64, "epochs": 10, "lr": 1e-2,
           "weight_decay": 0.0}
    model, _ = train_token(tr, vocab, parts["train"], np.zeros(0, dtype=np.int64), cfg, seed=0,
                           log=lambda s: None)
    top, _ = predict_token(model, encode(tr, vocab, 48), parts["test"], K, cfg)
    rows = np.concatenate([np.arange(*tr.request_bounds()[r:r + 2]) for r in parts["test"]])
    f1 = set_metrics(top, tr.experts[rows], E)["per_layer"]["f1"]
    assert f1[0] < 0.35 and min(f1[1:]) > 0.6, f1


def test_train_rejects_impossible_settings(tmp_path):
    path = tmp_path / "synth.parquet"
    write_trace(synth_trace(num_prompts=5), path)
    def train(setting):
        return predictor_cli("train", f"trace.path={path}", "predictor=tiny", setting,
                             f"hydra.run.dir={tmp_path / 'tr'}", timeout=60)

    out = train("predictor.token.epochs=0")
    assert out.returncode == 2
    assert out.stderr.strip() == ("moesim predictor train: error: predictor.token.epochs=0; "
                                  "expected an integer >= 1")
    assert not (tmp_path / "tr" / "checkpoint").exists()
    out = train("predictor.token.decode_prev_token=later")
    assert out.returncode == 2 and out.stderr.strip() == (
        "moesim predictor train: error: predictor.token.decode_prev_token=later; expected lower, "
        "same or none")


def _tiny_prefill_model():
    import torch

    from sim.predictor.model import TokenPredictor

    torch.manual_seed(0)
    cfg = {"mode": "prefill_layers", "d_model": 16, "layers": 1, "heads": 2, "d_ff": 32,
           "dropout": 0.0, "num_layers": 5, "num_experts": 8, "vocab_size": 20, "num_hash": 30,
           "num_pos_buckets": 48, "layer_d_model": 16, "layer_layers": 2, "layer_heads": 2,
           "layer_d_ff": 32, "prev_token": "lower"}
    m = TokenPredictor(cfg).eval()
    with torch.no_grad():  # the zero-initialised direct terms must be exercised too
        for p in (m.cross, m.prompt_cross, m.layer_bias):
            p.normal_(0.0, 0.5)
    return m


def test_prefill_layers_sees_no_layer_at_or_above_l_of_any_token():
    """Prefill mode: layer l's logits of every token may use any token's experts at layers < l
    (and later tokens' pieces) but nothing at layers >= l of ANY token; padding is invisible."""
    import torch

    m = _tiny_prefill_model()
    g = torch.Generator().manual_seed(2)
    B, W, L, K, E = 2, 6, 5, 2, 8

    def rand_sets(n: int) -> torch.Tensor:
        return torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(n)])

    tok = torch.randint(2, 20, (B, W), generator=g)
    ng = torch.randint(1, 30, (B, W, 24), generator=g)
    pos = torch.arange(W).repeat(B, 1)
    has_prev = torch.ones(B, W, dtype=torch.bool)
    has_prev[:, 0] = False
    has_next = torch.ones(B, W, dtype=torch.bool)
    has_next[:, -1] = False

    def run(tk: torch.Tensor, ex: torch.Tensor, ngr: torch.Tensor = ng) -> torch.Tensor:
        mh = torch.zeros(B, W, L, E).scatter_(3, ex, 1.0)
        valid = (tk > 0).float()[..., None, None]
        pm = (mh * valid).sum(1) / valid.sum(1)  # (B, L, E) the window's prompt summary
        with torch.no_grad():
            return m(tk, ngr, pos, experts=ex, prev_experts=torch.roll(ex, 1, 1),
                     has_prev=has_prev, next_experts=torch.roll(ex, -1, 1), has_next=has_next,
                     prompt_mean=pm)

    ex = rand_sets(B * W * L).view(B, W, L, K)
    base = run(tok, ex)
    for l in (1, 2, 3):
        ex2 = ex.clone()  # every token's layers >= l change
        ex2[:, :, l:] = rand_sets(B * W * (L - l)).view(B, W, L - l, K)
        out2 = run(tok, ex2)
        assert torch.equal(base[:, :, :l + 1], out2[:, :, :l + 1]), l
        assert not torch.allclose(base[:, :, l + 1:], out2[:, :, l + 1:]), l
    # a LATER token's layer l-1 is used for layer l (prefill knows it), not below
    l = 2
    ex3 = ex.clone()
    ex3[:, 4, l - 1] = rand_sets(B).view(B, K)
    out3 = run(tok, ex3)
    assert torch.equal(base[:, 0, :l], out3[:, 0, :l])
    assert not torch.allclose(base[:, 0, l], out3[:, 0, l])
    # later tokens' pieces reach earlier tokens (bidirectional context)
    tok4 = tok.clone()
    tok4[:, 5] = 3 + (tok[:, 5] - 1) % 16
    assert not torch.allclose(base[:, 0], run(tok4, ex)[:, 0])
    # right padding (token id 0) is masked: its n-grams cannot reach the valid tokens
    tok5 = tok.clone()
    tok5[:, 4:] = 0
    has_next[:, 3] = False
    ng6 = ng.clone()
    ng6[:, 4:] = torch.randint(1, 30, (B, 2, 24), generator=g)
    assert torch.equal(run(tok5, ex)[:, :4], run(tok5, ex, ng6)[:, :4])


def test_prefill_layers_batches_leak_no_layer_at_or_above_l():
    """End to end through encode / windows / batches: replacing every token's experts at layers
    >= l of the trace leaves the predicted layers <= l unchanged; the prompt summary is the
    prompt's mean multi-hot."""
    import torch

    from sim.predictor.model import TokenPredictor
    from sim.predictor.token import encode, predict_token

    L, E, K = 4, 16, 2
    tr = synth_trace(num_prompts=12, L=L, E=E, K=K)
    vocab = Vocab.build(tr.tokens["text"].to_numpy(), 1, 64)
    torch.manual_seed(0)
    m = TokenPredictor({"mode": "prefill_layers", "d_model": 16, "layers": 1, "heads": 2,
                        "d_ff": 32, "dropout": 0.0, "num_layers": L, "num_experts": E,
                        "vocab_size": len(vocab), "num_hash": 64, "num_pos_buckets": 48,
                        "layer_d_model": 16, "layer_layers": 1, "layer_heads": 2,
                        "layer_d_ff": 32}).eval()
    with torch.no_grad():
        for p in (m.cross, m.prompt_cross):
            p.normal_(0.0, 0.5)
    cfg = {"window": 4, "batch_tokens": 16}  # long prompts span several windows
    req = np.arange(12)
    enc = encode(tr, vocab, 48)
    b = tr.request_bounds()
    want = multi_hot(tr.experts[b[3]:b[4]], E).mean(0)  # (L, E)
    assert np.allclose(enc.prompt_mean[3], want)
    top, _ = predict_token(m, enc, req, K, cfg)
    rng = np.random.default_rng(1)
    for l in (1, 2):
        ex = tr.experts.astype(np.int64).copy()
        ex[:, l:] = np.argsort(rng.random((len(ex), L - l, E)), -1)[..., :K]
        tr2 = RoutingTrace(ex.astype(np.int16), None, tr.tokens, tr.meta)
        top2, _ = predict_token(m, encode(tr2, vocab, 48), req, K, cfg)
        assert np.array_equal(top[:, :l + 1], top2[:, :l + 1]), l
        assert not np.array_equal(top[:, l + 1:], top2[:, l + 1:]), l


def _mixed_phase_trace(num_prompts: int = 12, L: int = 4, E: int = 16, K: int = 2) -> RoutingTrace:
    """synth_trace with the second half of each prompt's tokens marked decode."""
    tr = synth_trace(num_prompts=num_prompts, L=L, E=E, K=K)
    b = tr.request_bounds()
    phase = np.array(["prefill"] * tr.num_tokens, dtype=object)
    for r in range(len(b) - 1):
        phase[b[r] + (b[r + 1] - b[r] + 1) // 2:b[r + 1]] = "decode"
    tok = tr.tokens.copy()
    tok["phase"] = phase.astype(str)
    return RoutingTrace(tr.experts, None, tok, tr.meta)


def _tiny_phased(vocab_size: int, L: int, E: int):
    import torch

    from sim.predictor.model import PhasedPredictor

    torch.manual_seed(0)
    base = {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "dropout": 0.0, "num_layers": L,
            "num_experts": E, "vocab_size": vocab_size, "num_hash": 64, "num_pos_buckets": 48,
            "layer_d_model": 16, "layer_layers": 1, "layer_heads": 2, "layer_d_ff": 32}
    m = PhasedPredictor({"mode": "phased",
                         "prefill": {**base, "mode": "prefill_layers", "prev_token": "lower"},
                         "decode": {**base, "mode": "token_layers", "prev_token": "same"}}).eval()
    with torch.no_grad():
        for head in (m.prefill, m.decode):
            head.cross.normal_(0.0, 0.5)
        m.prefill.prompt_cross.normal_(0.0, 0.5)
    return m


def test_phased_predictor_answers_each_token_with_its_phase_head():
    """Prefill tokens get the prefill head's answer over the prompt's prefill tokens only (a
    decode token's pieces or experts never reach them); decode tokens get the decode head's over
    the whole request; per-request probability sums add both."""
    from sim.predictor.data import request_rows
    from sim.predictor.token import encode, predict_token

    L, E, K = 4, 16, 2
    tr = _mixed_phase_trace(L=L, E=E, K=K)
    vocab = Vocab.build(tr.tokens["text"].to_numpy(), 1, 64)
    m = _tiny_phased(len(vocab), L, E)
    cfg = {"window": 4, "batch_tokens": 16}
    req = np.array([5, 1, 7, 2])  # any order: answers come back in request order
    rows = request_rows(tr.request_bounds(), req)
    pre = tr.tokens["phase"].to_numpy()[rows] == "prefill"
    assert pre.any() and (~pre).any()
    top, sums = predict_token(m, encode(tr, vocab, 48), req, K, cfg, prob_sums=True)
    dec_top, dec_sums = predict_token(m.decode, encode(tr, vocab, 48), req, K, cfg, prob_sums=True)
    assert np.array_equal(top[~pre], dec_top[~pre])
    # the prefill head alone on a trace holding only the prefill tokens
    keep = np.flatnonzero(tr.tokens["phase"].to_numpy() == "prefill")
    only = tr.take(keep)
    only_top, _ = predict_token(m.prefill, encode(only, vocab, 48), req, K, cfg)
    assert np.array_equal(top[pre], only_top)
    assert sums.shape == (len(req), L, E)
    n_tok = np.diff(tr.request_bounds())[req]
    assert np.allclose(sums.sum(-1), n_tok[:, None], atol=1e-3)  # each token's probabilities sum to 1
    # decode tokens' pieces and experts changed: the prefill answers stay
    ex = tr.experts.copy()
    dec_rows = np.flatnonzero(tr.tokens["phase"].to_numpy() == "decode")
    ex[dec_rows] = (ex[dec_rows] + 3) % E
    tok2 = tr.tokens.copy()
    tok2.loc[dec_rows, "text"] = "w0"
    tr2 = RoutingTrace(ex, None, tok2, tr.meta)
    top2, _ = predict_token(m, encode(tr2, vocab, 48), req, K, cfg)
    assert np.array_equal(top[pre], top2[pre])
    assert not np.array_equal(top[~pre], top2[~pre])


@pytest.mark.slow
def test_default_train_on_mixed_phases_reports_each_phase(tmp_path):
    """`predictor=tiny` (phased like the default) on a trace with prefill and decode tokens: one
    checkpoint, the eval reports overall / prefill / decode with f1 and f1_macro for the predictor
    and every baseline."""
    path = tmp_path / "mixed.parquet"
    write_trace(_mixed_phase_trace(num_prompts=60), path)
    run = tmp_path / "train"
    train_tiny(path, run, "predictor.token.epochs=6")
    ck = json.loads((run / "checkpoint" / "config.json").read_text())
    tm = ck["token_model"]
    assert tm["mode"] == "phased" and tm["prefill"]["mode"] == "prefill_layers"
    assert tm["decode"]["mode"] == "token_layers" and tm["decode"]["prev_token"] == "same"
    assert "prefill tokens" in tm["trained_on"]["prefill"] and "decode and" in tm["trained_on"]["decode"]
    ev = tmp_path / "eval"
    out = eval_ok(run / "checkpoint", path, ev, "split=test", "staleness_periods=[1]")
    ph = json.loads((ev / "metrics.json").read_text())["token"]["phases"]
    assert set(ph) == {"overall", "prefill", "decode"}
    assert ph["prefill"]["n"] + ph["decode"]["n"] == ph["overall"]["n"]
    for name, p in ph.items():
        assert set(p["baselines"]) == {"popular", "previous_prompt", "transition", "piece_lookup"}
        for v in [p["predictor"], *p["baselines"].values()]:
            assert 0 < v["f1"] <= v["f1_macro"] <= 1
        # the synthetic routing is a function of the piece: the lookup is exact, the others not
        assert p["predictor"]["f1"] > max(p["baselines"][k]["f1"] for k in
                                          ("popular", "previous_prompt", "transition")), (name, p)
        assert p["beats_all_baselines"] == (p["predictor"]["f1"] > p["baselines"]["piece_lookup"]["f1"])
    assert "prefill (" in out.stdout and "decode (" in out.stdout


@pytest.mark.slow
def test_absent_phase_refuse_trains_the_same_prefill_head_and_refuses_decode(tmp_path):
    """absent_phase=refuse on a prefill-only trace: the prefill head is the one the default
    (absent_phase=other) trains, tensor for tensor; no decode head, and eval of decode tokens is
    a one-line error."""
    from safetensors.numpy import load_file

    only = tmp_path / "prefill.parquet"
    write_trace(synth_trace(num_prompts=20), only)
    heads = {}
    for absent in ("other", "refuse"):
        ck = train_tiny(only, tmp_path / absent, "predictor.token.epochs=1",
                        "predictor.prompt.epochs=1", f"predictor.absent_phase={absent}")
        heads[absent] = load_file(ck / "token.safetensors")
    tm = json.loads((tmp_path / "other" / "checkpoint" / "config.json").read_text())["token_model"]
    assert "no decode tokens" in tm["trained_on"]["decode"]  # the default: learnt from prefill
    pre = {k for k in heads["other"] if k.startswith("prefill.")}
    assert pre and set(heads["refuse"]) == pre
    assert all(np.array_equal(heads["other"][k], heads["refuse"][k]) for k in pre)
    tm = json.loads((tmp_path / "refuse" / "checkpoint" / "config.json").read_text())["token_model"]
    assert tm["decode"] is None and "not trained" in tm["trained_on"]["decode"]
    mixed = tmp_path / "mixed.parquet"
    write_trace(_mixed_phase_trace(num_prompts=6), mixed)
    out = predictor_cli("eval", f"checkpoint={tmp_path / 'refuse' / 'checkpoint'}",
                        f"trace.path={mixed}", "split=all", f"hydra.run.dir={tmp_path / 'ev'}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "no decode head" in out.stderr and "absent_phase=refuse" in out.stderr
