"""``moesim sim`` on impossible configs and bad inputs: one line naming the key, exit 2, no
traceback, no run directory left behind (the simulator's share of the bad-input list)."""

from __future__ import annotations

import pytest

from sim.app.cli import main as moesim

BAD = [
    (["hardware.hbm_bytes_per_s=0"], ["hardware.hbm_bytes_per_s"]),
    (["hardware.bf16_flops=0"], ["hardware.bf16_flops"]),
    (["hardware.nvlink_bytes_per_s=0"], ["hardware.nvlink_bytes_per_s"]),
    (["hardware.host_link_bytes_per_s=-1"], ["hardware.host_link_bytes_per_s"]),
    (["hardware.flops_efficiency=1.5"], ["hardware.flops_efficiency"]),
    (["+cluster.faults=[{time_s:1.0,gpu:0,node:-1,recovery_s:-1}]"], ["cluster.faults[0].recovery_s"]),
    (["+cluster.faults=[{time_s:-5,gpu:0,node:-1,recovery_s:1}]"], ["cluster.faults[0].time_s"]),
    (["+cluster.faults=[{time_s:1,gpu:0,node:0,recovery_s:1}]"], ["cluster.faults[0]", "one of gpu"]),
    (["+cluster.faults=[{time_s:1,gpu:99,node:-1,recovery_s:1}]"], ["cluster.faults[0]", "gpu 99"]),
    (["workload.path={dir}"], ["workload.path=", "is a directory"]),
    (["workload.path={dir}/none.csv"], ["workload.path=", "no such file"]),
    (["trace=file"], ["trace=file needs trace.path"]),
    (["trace.path={dir}"], ["trace.path=", "is a directory"]),
    (["serving.token_budget=0"], ["serving.token_budget"]),
    (["cluster.expert_budget_fraction=0"], ["cluster.expert_budget_fraction"]),
    (["cluster.expert_parallel=3"], ["expert_parallel=3"]),
    (["model.top_k=99"], ["model.top_k=99"]),
    (["policy.cache=belady"], ["policy.cache='belady'", "oracle"]),
    (["policy.cache=lru", "+policy.cache_args={capactiy:3}"], ["'lru'", "capactiy"]),
    (["workload.time_scale=0"], ["workload.time_scale"]),
    (["serving.router=nope"], ["router policy 'nope'", "least_loaded"]),
    (["policy.prefetch=emoe_a", "+policy.prefetch_args={period:x}"], ["'emoe_a'", "period"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_sim_input_is_one_line(args, words, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    argv = ["sim", "workload.num_requests=3", *[a.replace("{dir}", str(d)) for a in args]]
    try:
        rc = moesim(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no run directory left


def test_out_of_order_workload_is_an_error(tmp_path):
    from sim.common.errors import TraceFormatError
    from traces.request_import import import_workload

    f = tmp_path / "az.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,5\n"
                 "2023-11-16 18:17:01.00,10,5\n")
    with pytest.raises(TraceFormatError, match="data row 2: arrival .* before row 1"):
        import_workload([f], "azure-csv")


def test_a_stuck_simulation_is_a_livelock_error_not_a_hang(monkeypatch):
    """A cost model that returns zero time forever would spin the event loop; the simulator
    stops with a clear error instead (tests/sim/engine/test_sim_degenerate.py has the normal cases)."""
    import numpy as np

    import sim.engine.simulation as engine
    from sim.common.errors import MoesimError
    from sim.serving.binding import bind
    from sim.serving.testing import StubCost, random_pool, tiny_config, workload

    monkeypatch.setattr(engine, "LIVELOCK_ITERATIONS", 50)
    cfg = tiny_config(layers=1, experts=2, top_k=1, token_budget=1)
    rng = np.random.default_rng(0)
    pool = random_pool(1, 2, 1, entries=1, tokens=10, rng=rng)
    wl = workload([0.0], [200], [5])
    zero = StubCost(attn_s=0.0, expert_s_each=0.0, a2a_s=0.0, host_link_bytes_per_s=float("inf"))
    sim = engine.Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), zero, rng)
    with pytest.raises(MoesimError, match="livelock"):
        sim.run()


def test_progress_is_not_silent_off_a_terminal(capsys):
    from sim.engine.run import _Progress

    p = _Progress(10, enabled=True, tty=False, every_s=0.0)
    p.update(4)
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("sim: 4/10 requests done") and err[-1].startswith("sim: 4/10")
    q = _Progress(10, enabled=False, tty=False)
    q.update(3)
    q.close()
    assert capsys.readouterr().err == ""
