"""pipeline.report: the HTML page of a pipeline.run workdir (written by the run itself) and of a
search's model_dir alone; its figures, numbers, escaping, refusals and atomic replacement; and,
when Chromium is installed, the page loaded in headless Chromium over the DevTools protocol: no
console error, every figure decoded and visible."""
from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import read_json

TINY = ["search.pretrain_steps=10", "search.search_steps=20", "search.batch_size=256",
        "search.min_arch_updates=0", "search.eval_every=10", "retrain.batch_size=256",
        "retrain.max_epochs=1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(html.parser.HTMLParser):
    """The page's images, table cells (per row) and text."""

    def __init__(self):
        super().__init__()
        self.images, self.rows, self.text, self.scripts = [], [], [], 0
        self._row, self._cell = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "script":
            self.scripts += 1
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _decode_png(data: bytes) -> np.ndarray:
    from matplotlib import image

    assert data.startswith(PNG_MAGIC)
    return image.imread(io.BytesIO(data), format="png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small `pipeline.run --demo` (3000 rows, the real Beam job in-process, a tiny search and
    retrainings), which writes its report; then a RaS baseline retrained into the workdir.
    Returns (workdir, the run's stdout)."""
    import contextlib

    from configs import experiment
    from pipeline import run as run_cli
    from pipeline.retrain import retrain

    work = tmp_path_factory.mktemp("report") / "w"
    argv = ["--demo", "--rows", "3000", "--workdir", str(work), "--quiet", "--fde_dim", "8",
            "--runner", "DirectRunner", "--direct_running_mode", "in_memory"]
    for setting in TINY:
        argv += ["--set", setting]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli.main(argv) == 0
    cfg = experiment.resolve("synthetic", set_overrides=TINY)
    retrain(str(work / "data"), "random:1", str(work / "retrain_ras"), cfg, quiet=True)
    return work, out.getvalue()


def test_pipeline_run_ends_with_the_report(run_dir):
    work, stdout = run_dir
    page = work / "report" / "report.html"
    assert stdout.rstrip().splitlines()[-1] == f"report: {page}"
    manifest = read_json(work / "report" / "report.json")
    assert manifest["generator"] == "pipeline.report"
    assert sorted(os.listdir(work / "report")) == sorted(manifest["files"] + ["report.json"])
    # the run's own report: AutoDim and FDE-8 only (RaS came later)
    assert sorted(p["label"] for p in manifest["points"]) == ["AutoDim", "FDE-8"]


def test_report_of_a_run(run_dir, capsys):
    from pipeline import report

    work, _ = run_dir
    assert report.main(["--run", str(work)]) == 0  # replaces the run's own report
    out = work / "report"
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    page = _parse(out / "report.html")
    manifest = read_json(out / "report.json")
    dims = read_json(work / "search" / "dims.json")
    summary = read_json(work / "summary.json")

    # every image embedded as a PNG that decodes, identical to the PNG file of the same plot
    pngs = {n: (out / n).read_bytes() for n in manifest["files"] if n.endswith(".png")}
    assert len(page.images) == len(pngs) == len(dims["field_order"]) + 1 and page.scripts == 0
    embedded = []
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert _decode_png(data).shape[0] > 50
        embedded.append(data)
    assert sorted(embedded) == sorted(pngs.values())
    auc_plot = _decode_png(pngs["auc_vs_params.png"])
    assert auc_plot.shape[1] == 800 and auc_plot.shape[0] > 400
    text = "".join(page.text)
    assert "http://" not in (out / "report.html").read_text().replace(
        "http-equiv", "") and "https://" not in (out / "report.html").read_text()

    # the headline numbers are metrics.json's
    rows = {r[0]: r for r in page.rows if r}
    for label, sub in (("AutoDim", "retrain_autodim"), ("FDE-8", "retrain_fde8"),
                       ("RaS", "retrain_ras")):
        m = read_json(work / sub / "metrics.json")
        assert rows[label][1:5] == [f"{m['test_auc']:.4f}", f"{m['test_logloss']:.4f}",
                                    f"{m['params']:,}", f"{4 * m['params']:,}"], label
        point = next(p for p in manifest["points"] if p["label"] == label)
        assert point["params"] == m["params"] and point["test_auc"] == m["test_auc"]
    fde8 = read_json(work / "retrain_fde8" / "metrics.json")
    auto = read_json(work / "retrain_autodim" / "metrics.json")
    assert rows["AutoDim"][5] == f"{100 * auto['params'] / fde8['params']:.1f}%"
    assert rows["AutoDim"][6] == f"{auto['test_auc'] - fde8['test_auc']:+.4f}"

    # the export: bytes on disk of the version directory, timed on raw test-split rows
    version = Path(summary["export"])
    size = sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
    assert manifest["export"]["bytes"] == size
    assert rows["size on disk"][1].startswith(f"{size:,} bytes")
    latency = manifest["export"]["latency"]
    assert latency["rows_source"].startswith("test-split rows of input file")
    assert latency["batch_rows"] == 256
    assert 0 < latency["one_median_ms"] and 0 < latency["batch_median_ms"] < 10_000

    # every field: vocabulary, chosen dim, planted truth, params and the params saved
    cands = dims["candidate_dims"]
    for name in dims["field_order"]:
        f = dims["fields"][name]
        truth = summary["truth"][name]
        planted = str(truth["latent_dim"]) if truth["informative"] else "0"
        assert rows[name][:5] == [name, f"{f['vocab_size']:,}", str(f["dim"]), planted, ""]
        assert rows[name][5:] == [f"{f['params']:,}",
                                  f"{f['vocab_size'] * max(cands) - f['params']:,}"]
    assert '"candidate_dims": [' in text and "Parameter budget" not in text


def test_frontier_keeps_the_points_nothing_beats():
    from pipeline.report_page import frontier

    points = [{"label": k, "params": p, "test_auc": a} for k, p, a in (
        ("a", 100, 0.70), ("b", 200, 0.69), ("c", 300, 0.74), ("d", 300, 0.72),
        ("e", 400, 0.74), ("f", 50, 0.60))]
    assert [p["label"] for p in frontier(points)] == ["f", "a", "c"]


def test_latency_rows_are_the_test_split(run_dir):
    """The rows the report times are the raw lines the Beam job put in the test split."""
    from configs.features import DataSchema
    from pipeline.export import raw_rows_from_inputs

    work, _ = run_dir
    schema = DataSchema.load(work / "data")
    counts = [len(raw_rows_from_inputs(schema, work / "data", 10_000, split=k)[0])
              for k in (0, 1, 2)]
    assert counts == [schema.splits[s] for s in ("train", "valid", "test")]


def test_alpha_history_is_the_searchs(run_dir):
    """The per-field charts plot the search's alpha scalars: the last step's probabilities are
    dims.json's final ones."""
    from pipeline.report import alpha_history

    work, _ = run_dir
    dims = read_json(work / "search" / "dims.json")
    history = alpha_history(work / "search", dims["field_order"], dims["candidate_dims"])
    assert sorted(history) == sorted(dims["field_order"])
    for name in dims["field_order"]:
        h = history[name]
        assert h["steps"] == sorted(h["steps"]) and len(h["steps"]) >= 2
        np.testing.assert_allclose(h["probs"][-1], dims["fields"][name]["probabilities"],
                                   atol=1e-5)
        np.testing.assert_allclose(np.sum(h["probs"], axis=1), 1.0, atol=1e-5)


def test_search_dir_alone_with_budget_consensus_and_hostile_names(run_dir, tmp_path, capsys):
    """A search's model_dir: its part of the page (no AUC picture); dims.json's budget and
    consensus shown; a field name full of HTML escaped; without events, the final
    probabilities."""
    from pipeline import report

    work, _ = run_dir
    search = tmp_path / "search"
    shutil.copytree(work / "search", search)
    dims = read_json(search / "dims.json")
    evil = '<script>alert("x")</script>&amp;'
    first = dims["field_order"][0]
    dims["fields"][evil] = dims["fields"].pop(first)
    dims["field_order"][0] = evil
    dims["budget"] = {"params": 5000, "requested": {"ratio": 0.1}, "achieved": 4800,
                      "share_of_budget": 0.96, "repair": [{"field": "C1", "from": 8, "to": 2}]}
    dims["consensus"] = {"seeds": [1, 2, 3], "pearson": 0.871, "spearman": 0.853,
                         "fields": {evil: {"dims": [2, 8, 2], "disagreement": 0.5}}}
    (search / "dims.json").write_text(json.dumps(dims))
    out = tmp_path / "page"
    assert report.main(["--run", str(search), "--output", str(out)]) == 0
    raw = (out / "report.html").read_text()
    page = _parse(out / "report.html")
    assert "<script>" not in raw and page.scripts == 0
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;" in raw
    rows = {r[0]: r for r in page.rows if r}
    assert rows[evil][-2:] == ["2, 8, 2", "0.5"]
    assert rows["Pearson correlation of the chosen dimensions"][1] == "0.871"
    assert rows["achieved"][1] == "4,800" and rows["share of the budget"][1] == "96.0%"
    manifest = read_json(out / "report.json")
    assert "auc_vs_params.png" not in manifest["files"] and manifest["budget"]["params"] == 5000
    assert len(page.images) == len(dims["field_order"])

    # the events gone: the final probabilities, said so
    shutil.rmtree(search / "train")
    assert report.main(["--run", str(search), "--output", str(out)]) == 0
    assert "no events found" in (out / "report.html").read_text()
    capsys.readouterr()


def test_budget_line_on_the_run_picture(run_dir, tmp_path):
    """summary.json's budget is drawn: the AUC picture differs from the one without it."""
    from pipeline import report

    work, _ = run_dir
    copy = tmp_path / "w"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("report", "data", "raw"))
    summary = read_json(copy / "summary.json")
    summary["export"] = None
    (copy / "summary.json").write_text(json.dumps(summary))
    plain = report.collect(copy, latency=False)
    summary["budget"] = {"params": 20000}
    (copy / "summary.json").write_text(json.dumps(summary))
    page = report.write_report(copy, latency=False)
    manifest = read_json(page.parent / "report.json")
    assert manifest["budget"] == {"params": 20000} and manifest["export"] is None
    from pipeline import report_page

    with_line = (page.parent / "auc_vs_params.png").read_bytes()
    without = report_page.auc_figure(plain["points"], None)
    assert _decode_png(with_line).shape == _decode_png(without).shape
    assert not np.array_equal(_decode_png(with_line), _decode_png(without))
    assert "budget (embedding parameters)" in page.read_text()


def test_refusals_write_nothing(run_dir, tmp_path, capsys):
    from pipeline import report
    from pipeline import run as run_cli

    work, _ = run_dir
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["--run", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"--run {empty}: neither a pipeline.run workdir (no summary.json) nor a search's " \
           f"model_dir (no dims.json)" in err
    assert os.listdir(empty) == []
    assert report.main(["--run", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert report.main(["--run", "ram://runs/w"]) == 2
    assert "a report is written of a local directory" in capsys.readouterr().err

    # an --output that is not a report of ours, or a report holding a file we did not write
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert report.main(["--run", str(work / "search"), "--output", str(foreign)]) == 2
    assert "is not a report of pipeline.report" in capsys.readouterr().err
    assert os.listdir(foreign) == ["notes.txt"]
    ours = tmp_path / "ours"
    assert report.main(["--run", str(work / "search"), "--output", str(ours)]) == 0
    before = {p.name: p.read_bytes() for p in ours.iterdir()}
    (ours / "notes.txt").write_text("keep")
    assert report.main(["--run", str(work / "search"), "--output", str(ours)]) == 2
    assert "holds notes.txt, which pipeline.report did not write" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ours.iterdir()} == {**before, "notes.txt": b"keep"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # pipeline.run refuses before anything runs when WORKDIR/report is not its report
    w = tmp_path / "w"
    (w / "report").mkdir(parents=True)
    (w / "report" / "x.html").write_text("x")
    assert run_cli.main(["--workdir", str(w), "--demo", "--rows", "10"]) == 2
    assert "is not a report of pipeline.report" in capsys.readouterr().err
    assert sorted(os.listdir(w)) == ["report"]


# ----------------------------------------------------------------------------- the browser

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    the browser reads commands on fd 3, answers on fd 4, each message NUL-terminated JSON)."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params=None, session=None, timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations, failed
        loads) seen so far."""
        out = []
        for ev in self.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(json.dumps(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                out.append(json.dumps(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(params["entry"].get("text", ""))
        return out

    def load(self, url: str) -> str:
        """A new tab on `url`, after its load event; returns the tab's session."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, expression: str, session: str):
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, session=session)
        return result["result"]["value"]

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, EOFError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


IMAGES = """JSON.stringify(Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect(); const s = getComputedStyle(i);
  return {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, bw: r.width,
          bh: r.height, shown: s.display !== 'none' && s.visibility !== 'hidden'};
}))"""


def test_page_renders_in_headless_chromium(request, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the HTML structure "
                    "is checked by the other tests")
    work, _ = request.getfixturevalue("run_dir")
    page = work / "report" / "report.html"
    n_images = len(_parse(page).images)
    # a control page the same checks must fail: an image its policy blocks, a script error
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace(
        "</body>", '<img src="http://192.0.2.1/x.png"></body>'), encoding="utf-8")
    browser = DevTools(binary, tmp_path / "profile")
    try:
        session = browser.load(page.as_uri())
        images = json.loads(browser.evaluate(IMAGES, session))
        errors = browser.errors()
        browser.events.clear()
        bad_session = browser.load(bad.as_uri())
        bad_images = json.loads(browser.evaluate(IMAGES, bad_session))
        time.sleep(0.5)
        browser.send("Runtime.evaluate", {"expression": "0"}, session=bad_session)
        bad_errors = browser.errors()
    finally:
        browser.close()
    assert errors == []
    assert len(images) == n_images
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
        assert img["bw"] > 0 and img["bh"] > 0 and img["shown"], img
    assert images[0]["w"] == 800 and images[0]["bw"] >= 400  # the AUC picture, legible
    assert bad_images[-1]["w"] == 0 and bad_errors, "the control page's blocked image"
