"""Reports as a person sees them: the HTML rendered by headless Chromium at a 1,400 px window.

For each report, a copy of ``report.html`` (``check.html``, beside it so the PNGs resolve) gets a
script that, once the page has loaded, writes into the DOM every image's ``naturalWidth`` and
every table's width against its container's; ``chromium --headless --dump-dom`` returns that
DOM. A screenshot of the whole page (``--screenshot``, the window as tall as the page) is taken
too: set ``MOESIM_SCREENSHOTS=DIR`` to keep it. Without a Chromium (``chromium``,
``chromium-browser``, ``google-chrome``) the tests skip with the reason; ``.ci/run`` installs
one from the OS packages.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sim.app.cli import main as cli_main

WIDTH = 1400
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
CHECK = """<script>window.addEventListener('load', () => {
  const r = {
    imgs: [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth})),
    tables: [...document.querySelectorAll('table')].map(t => ({
      first: t.querySelector('th') ? t.querySelector('th').textContent : '',
      scroll: t.scrollWidth, width: Math.ceil(t.getBoundingClientRect().width),
      container: t.parentElement.clientWidth})),
    inner: window.innerWidth, page: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight};
  const p = document.createElement('pre'); p.id = 'moesim-check';
  p.textContent = JSON.stringify(r); document.body.appendChild(p);
});</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Chromium (apt-get install -y chromium) to check "
                "the HTML reports")


def _chrome(args: list[str]) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)
    return done.stdout


def render(report_dir: Path, shot: Path) -> dict:
    """What Chromium saw of ``report_dir/report.html`` at a 1,400 px window; a screenshot of the
    whole page into ``shot``."""
    page = (report_dir / "report.html").read_text()
    (report_dir / "check.html").write_text(page.replace("</body>", CHECK + "</body>"))
    dom = _chrome([f"--window-size={WIDTH},900", "--virtual-time-budget=10000", "--dump-dom",
                   (report_dir / "check.html").as_uri()])
    (report_dir / "check.html").unlink()
    m = re.search(r'<pre id="moesim-check">(.*?)</pre>', dom, re.S)
    assert m, f"the check script did not run: {dom[:300]!r}"
    seen = json.loads(html.unescape(m.group(1)))
    height = min(int(seen["height"]) + 20, 16000)
    _chrome([f"--window-size={WIDTH},{height}", f"--screenshot={shot}",
             (report_dir / "report.html").as_uri()])
    keep = os.environ.get("MOESIM_SCREENSHOTS")
    if keep and shot.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    return seen


def assert_readable(seen: dict, shot: Path, images: set[str]) -> None:
    assert seen["inner"] == WIDTH
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = {i["src"]: i["w"] for i in seen["imgs"]}
    assert images <= set(drawn), f"missing figures: {images - set(drawn)}"
    assert all(w > 0 for w in drawn.values()), f"images not rendered: {drawn}"
    assert seen["tables"], "no table rendered"
    for t in seen["tables"]:
        assert t["scroll"] <= t["container"] and t["width"] <= t["container"], \
            f"table starting with {t['first']!r} overflows: {t}"
    assert seen["page"] <= WIDTH, f"the page scrolls sideways: {seen['page']} px"


@pytest.mark.slow
def test_demo_report_renders_in_chromium(tmp_path):
    """A small ``moesim demo`` (four runs and the replay, about 20 s): every figure drawn, every
    table (the 12-metric runs table too, 1,348 px before it was split) inside the page."""
    chromium()
    assert cli_main(["demo", f"hydra.run.dir={tmp_path}", "workload.num_requests=8",
                     "trace.pool_size=4", "trace.pool_tokens=256"]) == 0
    seen = render(tmp_path / "report", tmp_path / "demo_report.png")
    assert_readable(seen, tmp_path / "demo_report.png",
                    {"overview.png", "latency_cdf.png", "hit_rate_vs_memory.png",
                     "fidelity_vs_memory.png", "loads_vs_memory.png"})


@pytest.mark.slow
def test_sweep_report_renders_in_chromium(tmp_path):
    """Four tiny ``moesim sim`` runs laid out as a sweep (LRU and LIFO at two memories): the
    overview, the CDFs and hit rate against memory drawn; tables inside the page, the failed
    runs' table with its long path too."""
    chromium()
    sweep = tmp_path / "sweep"
    for i, (cache, frac) in enumerate([("lru", 0.25), ("lru", 0.5), ("lifo", 0.25),
                                       ("lifo", 0.5)]):
        assert cli_main(["sim", f"hydra.run.dir={sweep / str(i)}", f"policy.cache={cache}",
                         f"cluster.expert_budget_fraction={frac}", "workload.num_requests=6",
                         "trace.pool_size=4", "trace.pool_tokens=256"]) == 0
    (sweep / "4" / ".hydra").mkdir(parents=True)  # a run that failed: its path in a table
    (sweep / "4" / "failed.json").write_text(json.dumps({"error": "killed (SIGKILL) after "
                                                                   "3,600 s of simulated time"}))
    assert cli_main(["report", str(sweep)]) == 0
    seen = render(sweep / "report", tmp_path / "sweep_report.png")
    assert_readable(seen, tmp_path / "sweep_report.png",
                    {"overview.png", "latency_cdf.png", "hit_rate_vs_memory.png",
                     "e2e_s_vs_memory.png"})
