"""``report.html``: built from a real run, parsed here, and rendered in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from PIL import Image

import app.report as report_mod
from app.config import ProcessConfig
from app.process import run_process
from app.report import write_report
from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
EDGE = ROOT / "sample_data" / "edge"
SCRIPT_KEY = "hostile/<script>alert(1)</script>.jpg"
IMG_KEY = "hostile/<img src=x onerror=alert(2)>.png"
URLISH_KEY = "hostile/a #1 ?x=%41 & \"q\" 'r'.jpg"
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def iter(self, tag: str | None = None) -> list[Node]:
        found = [self] if tag is None or self.tag == tag else []
        for child in self.children:
            found.extend(child.iter(tag))
        return found

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert tag in [n.tag for n in self.stack], f"stray </{tag}>"
        while self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    assert [n.tag for n in builder.stack] == ["#document"], "unclosed elements"
    return builder.root


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    hostile = base / "hostile"
    _image(hostile / "<script>alert(1)<" / "script>.jpg", (200, 30, 30), (90, 60))
    _image(hostile / "<img src=x onerror=alert(2)>.png", (30, 200, 30), (40, 70))
    _image(hostile / "a #1 ?x=%41 & \"q\" 'r'.jpg", (30, 30, 200), (64, 64))
    (hostile / "notes <b>.txt").write_text("not an image")
    out = base / "out"
    inputs = [str(IMAGES), str(EDGE), str(hostile)]
    run_process(ProcessConfig.from_mapping({"inputs": inputs, "output": str(out), "quiet": True}))
    write_report(out)
    return out


@pytest.fixture(scope="module")
def html(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def dom(html: str) -> Node:
    return parse(html)


def _smallest(rec: dict[str, Any]) -> dict[str, Any]:
    outs: list[dict[str, Any]] = rec["result"]["outputs"]
    return min(outs, key=lambda o: o["width"] * o["height"])


def test_write_report_returns_the_file(run_dir: Path) -> None:
    assert write_report(run_dir) == run_dir / "report.html"
    assert not [p for p in run_dir.iterdir() if p.name.startswith("report.html.")]  # no temp


def _ok_tiles(dom: Node) -> dict[str, Node]:
    """The sheet's ok tiles by key (captions read ``<key> <w>x<h>``)."""
    sheet = next(n for n in dom.iter("div") if n.attrs.get("id") == "sheet")
    figs = [f for f in sheet.iter("figure") if "ok" in f.classes()]
    return {f.iter("figcaption")[0].all_text().rsplit(" ", 1)[0]: f for f in figs}


def test_every_ok_item_has_a_thumbnail_that_exists(run_dir: Path, dom: Node) -> None:
    recs = by_key(run_dir)
    tiles = _ok_tiles(dom)
    ok = [r for r in recs.values() if r["status"] == "ok"]
    assert len(ok) >= 31  # 28 samples + 3 hostile names
    assert set(tiles) == {r["key"] for r in ok}
    for rec in ok:
        (img,) = tiles[rec["key"]].iter("img")
        out = _smallest(rec)
        assert unquote(img.attrs["src"]) == out["path"]
        assert (run_dir / unquote(img.attrs["src"])).is_file()
        assert img.attrs["loading"] == "lazy"
        assert (img.attrs["width"], img.attrs["height"]) == (str(out["width"]), str(out["height"]))
    for img in dom.iter("img"):  # near-duplicate thumbnails too: relative, existing files
        src = img.attrs["src"]
        assert not src.startswith("/")
        assert ":" not in src
        assert "#" not in src
        assert "?" not in src
        assert (run_dir / unquote(src)).resolve().is_relative_to(run_dir.resolve())
        assert (run_dir / unquote(src)).is_file()


def test_failed_edge_cases_show_their_error_type(run_dir: Path, dom: Node) -> None:
    failed = [r for r in by_key(run_dir).values() if r["status"] == "failed"]
    assert {r["key"] for r in failed} >= {"edge/bomb.png", "edge/truncated.jpg"}
    tiles = [f.all_text() for f in dom.iter("figure") if "failed" in f.classes()]
    assert len(tiles) == len(failed)
    for rec in failed:
        (text,) = [t for t in tiles if t.startswith(rec["key"])]
        assert rec["error_type"] in text
        assert rec["error"][:40] in text


def test_skipped_inputs_are_listed(dom: Node) -> None:
    (skipped,) = [n for n in dom.iter("ul") if n.attrs.get("id") == "skipped"]
    assert "hostile/notes <b>.txt" in skipped.all_text()


def test_two_charts_with_lines_and_legends(run_dir: Path, dom: Node) -> None:
    charts = {n.attrs["id"]: n for n in dom.iter("svg") if "chart" in n.classes()}
    assert set(charts) == {"throughput", "queues"}
    stage_names = {s["name"] for s in json.loads((run_dir / "summary.json").read_text())["stages"]}
    for svg in charts.values():
        lines = svg.iter("polyline")
        assert lines
        assert all(len(p.attrs["points"].split()) >= 1 for p in lines)
        assert {p.all_text() for p in lines} == stage_names
    legends = [n.all_text() for n in dom.iter("div") if "legend" in n.classes()]
    assert len(legends) == 2
    assert all(name in legends[0] for name in stage_names)


def test_totals_bottleneck_and_advice(run_dir: Path, dom: Node) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    (totals,) = [n for n in dom.iter("table") if n.attrs.get("id") == "totals"]
    rows = {tr.iter("th")[0].all_text(): tr.iter("td")[0].all_text() for tr in totals.iter("tr")}
    for status, n in summary["counts"].items():
        assert rows[status] == str(n)
    assert rows["inputs seen"] == str(summary["inputs_seen"])
    (bottleneck,) = [n for n in dom.iter("p") if n.attrs.get("id") == "bottleneck"]
    assert summary["bottleneck"]["name"] in bottleneck.all_text()
    (advice,) = [n for n in dom.iter("table") if n.attrs.get("id") == "advice"]
    body = advice.iter("tr")[1:]
    assert [tr.iter("td")[0].all_text() for tr in body] == [a["stage"] for a in summary["advice"]]
    for tr, adv in zip(body, summary["advice"], strict=True):
        assert adv["kind"] in tr.all_text()
        assert adv["reason"] in tr.all_text()
        # the figures shown are those the verdict was computed from (a fused row's, too)
        cells = [td.all_text() for td in tr.iter("td")]
        assert cells[3:6] == [
            str(adv["figures"]["items"]),
            str(adv["figures"]["failed"]),
            f"{adv['figures']['items_per_s']:.1f}",
        ]
    assert not [n for n in dom.iter("p") if "banner" in n.classes()]


def test_near_duplicate_groups_side_by_side(run_dir: Path, dom: Node) -> None:
    groups = json.loads((run_dir / "summary.json").read_text())["collected"]["near_duplicates"]
    assert groups["groups"]
    rendered = [n for n in dom.iter("div") if "group" in n.classes()]
    assert len(rendered) == len(groups["groups"])
    for div, keys in zip(rendered, groups["groups"], strict=True):
        assert len(div.iter("img")) == len(keys)
        assert all(k in div.all_text() for k in keys)
    (rule,) = [n for n in dom.iter("p") if n.attrs.get("id") == "duplicates-rule"]
    assert f"within {groups['max_distance']} bits of each other" in rule.all_text()


def test_no_external_resources(html: str, dom: Node) -> None:
    assert "http://" not in html
    assert "https://" not in html
    assert "//" not in "".join(n.attrs.get("src", "") + n.attrs.get("href", "") for n in dom.iter())
    assert not dom.iter("link")
    assert not dom.iter("iframe")
    assert all("src" not in s.attrs for s in dom.iter("script"))
    assert "@import" not in html
    assert "url(" not in html


def test_hostile_names_are_escaped(run_dir: Path, html: str, dom: Node) -> None:
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert len(dom.iter("script")) == 1  # only the page's own counter
    assert not [n for n in dom.iter() if any(k.startswith("on") for k in n.attrs)]
    text = dom.all_text()
    for key in (SCRIPT_KEY, IMG_KEY, URLISH_KEY):
        assert key in text
        src = _ok_tiles(dom)[key].iter("img")[0].attrs["src"]
        assert (run_dir / unquote(src)).is_file()


def _synthetic(folder: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> Node:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        (folder / "summary.json").write_text(json.dumps(summary))
    return parse(write_report(folder).read_text())


def test_sheet_is_capped_and_banners_escape(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(report_mod, "MAX_TILES", 3)
    out = {"path": "512/a.jpg", "width": 10, "height": 10}
    recs = [{"key": f"k{i}", "status": "ok", "result": {"outputs": [out]}} for i in range(5)]
    summary = {"interrupted": True, "error": "<b>boom</b>", "counts": {"ok": 5}}
    dom = _synthetic(tmp_path / "run", recs, summary)
    assert len(dom.iter("img")) == 3
    assert "2 more item(s) not shown" in dom.all_text()
    banners = [n.all_text() for n in dom.iter("p") if "banner" in n.classes()]
    assert any("interrupted" in b for b in banners)
    assert any("<b>boom</b>" in b for b in banners)


def test_unsafe_output_paths_and_missing_summary(tmp_path: Path) -> None:
    recs = [
        {"key": "abs", "status": "ok", "result": {"outputs": [{"path": "/etc/passwd"}]}},
        {"key": "up", "status": "ok", "result": {"outputs": [{"path": "../x.jpg"}]}},
        {"key": "js", "status": "ok", "result": {"outputs": [{"path": "javascript:alert(1)"}]}},
    ]
    dom = _synthetic(tmp_path / "run", recs, {})
    srcs = [n.attrs["src"] for n in dom.iter("img")]
    assert srcs == ["javascript%3Aalert%281%29"]  # relative, not a scheme
    assert any("no summary.json" in n.all_text() for n in dom.iter("p"))
    assert len([n for n in dom.iter("svg") if "chart" in n.classes()]) == 2


# -- headless browser ----------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )


def _group_gone(pgid: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _dump_dom(browser: str, page: Path, profile: Path) -> str:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri() + "#check",  # the page loads its lazy thumbnails at once
    ]
    env = {**os.environ, "HOME": str(profile)}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    ) as proc:
        try:
            stdout, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("chromium did not finish in 90 s")
        finally:
            # helpers (zygote, crashpad) may outlive the browser process for a moment
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            assert _group_gone(proc.pid), "chromium processes left running"
    assert proc.returncode == 0
    return stdout.decode("utf-8")


def test_report_renders_in_headless_chromium(run_dir: Path, dom: Node, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    recs = by_key(run_dir)
    ok = {k for k, r in recs.items() if r["status"] == "ok"}
    groups = json.loads((run_dir / "summary.json").read_text())["collected"]["near_duplicates"]
    expected = len(ok) + sum(k in ok for g in groups["groups"] for k in g)
    assert len(dom.iter("img")) == expected
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    body = parse(_dump_dom(browser, run_dir / "report.html", profile)).iter("body")[0]
    assert body.attrs.get("data-images") == str(expected)
    assert int(body.attrs.get("data-charts", "0")) >= 2


def test_run_process_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = {"inputs": [str(EDGE)], "output": str(out), "quiet": True}
    run_process(ProcessConfig.from_mapping(cfg))
    dom = parse((out / "report.html").read_text(encoding="utf-8"))
    assert len(dom.iter("img")) >= 1
    assert len([n for n in dom.iter("svg") if "chart" in n.classes()]) == 2
    assert oct((out / "report.html").stat().st_mode & 0o777) != oct(0o600)
