"""``report.html``: one self-contained page per output folder, built from its summary and manifest.

What the page needs from the records, :class:`ReportSheet` gathers as a sink of the run's one
feed of them (:class:`app.endofrun.RecordFeed`): the contact sheet's first ``MAX_TILES`` tiles
(``ok`` and ``reused`` images with their thumbnails, ``failed`` ones with their errors) and
``MAX_LISTED`` skipped entries, and the data table's first ``MAX_TILES`` rows. The
near-duplicate groups (in ``summary.json``) come with their thumbnails from the run
(:attr:`app.collectors.NearDuplicates.thumbs`).
:func:`write_report` without a sheet (or with one whose feed never ended) reads the manifest
itself: once, and once more for the thumbnails of the groups, if any.

The page needs no server and makes no external request: thumbnails are ``<img>`` tags with paths
relative to the folder (the report sits in it), charts are inline SVG drawn here, and the only
script is a few lines that count loaded images and drawn charts (``data-images`` and
``data-charts`` on ``<body>``) so a headless browser can check the page. Opening
``report.html#check`` loads every lazy thumbnail at once before counting.

Every string from the manifest or the summary (keys come from file names, errors from servers) is
HTML-escaped; image paths are URL-encoded segment by segment (a file name that is not UTF-8 as
its exact bytes, which browsers resolve on disk).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline import atomic_write_text
from stages.parts import is_data_result

from .endofrun import RecordFeed, data_result

__all__ = [
    "GROUP_SHOWN",
    "MAX_TILES",
    "REPORT",
    "ReportSheet",
    "as_number",
    "smallest_output",
    "write_report",
]

REPORT = "report.html"
MAX_TILES = 2000
MAX_LISTED = 500  # skipped/cancelled entries, near-duplicate groups
#: members of a near-duplicate group shown with their thumbnails (summary.json lists them all):
#: a web crawl's placeholder image can make one group of thousands
GROUP_SHOWN = 24
#: statuses whose records have outputs: processed by this run, or done earlier and reused
DONE = ("ok", "reused")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H, PAD = 720, 240, 40

CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
svg.hist rect{fill:#4c78a8}
#data td{padding:1px 6px;font-variant-numeric:tabular-nums}
.banner{background:#fde2e1;border:1px solid #d62728;padding:.6em;margin:.6em 0}
.sheet,.group{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:168px;border:1px solid #ddd;padding:4px;overflow-wrap:anywhere;font-size:11px}
figure img{max-width:160px;max-height:160px;width:auto;height:auto;display:block}
figure.failed{background:#fff3f3;border-color:#d62728}
figure.reused{border-style:dashed}figure.reused i{color:#777}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td.l,th.l{text-align:left}.legend span{margin-right:1em}svg.chart{background:#fafafa}"""

SCRIPT = """addEventListener("load", function () {
  var b = document.body, imgs = Array.prototype.slice.call(document.images);
  function count() {
    b.dataset.images = String(imgs.filter(function (i) { return i.naturalWidth > 0; }).length);
    b.dataset.charts = String(Array.prototype.filter.call(document.querySelectorAll("svg.chart"),
      function (s) { return s.querySelector("path, polyline") !== null; }).length);
  }
  imgs.forEach(function (i) {
    i.addEventListener("load", count);
    if (location.hash === "#check") { i.loading = "eager"; }
  });
  count();
});"""


def write_report(
    folder: Path,
    sheet: ReportSheet | None = None,
    thumbs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``folder/report.html`` (atomically) from its summary and records; return its path.

    ``sheet``: the records as the run's feed gathered them, and ``thumbs`` the smallest output
    of each image of the near-duplicate groups (by key); without a sheet, or with one whose
    feed never ended (the run stopped before it), the manifest is read here.
    """
    folder = Path(folder)
    summary = _load_summary(folder / "summary.json")
    groups = _dup_groups(summary)
    if sheet is None or not sheet.feed.done:
        sheet, thumbs = ReportSheet(RecordFeed(folder)), None
    sheet.feed.check(sheet)
    wanted = {k for g in groups[:MAX_LISTED] for k in g[:GROUP_SHOWN]}
    if thumbs is None:
        thumbs = sheet.thumbs(wanted)
    title = f"<h1>Run report {_e(summary.get('run', ''))}</h1>"
    charts = _charts(summary.get("timeline") or {})
    body = [title, _totals(summary), sheet.contact_sheet(), sheet.data_table(), charts]
    body += [_advice(summary), _duplicates(groups, thumbs, _dup_distance(summary))]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e('pixpipe report ' + str(summary.get('run', '')))}</title>"
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + f"\n<script>{SCRIPT}</script>"
        "\n</body></html>\n"
    )
    path = folder / REPORT
    atomic_write_text(path, page)
    return path


class ReportSheet:
    """The report's part of the records, gathered a record at a time (a sink of ``feed``).

    Memory is bounded: at most ``MAX_TILES`` tiles and data rows and ``MAX_LISTED`` skipped
    entries are kept as HTML.
    """

    def __init__(self, feed: RecordFeed) -> None:
        self.feed = feed
        self.tiles: list[str] = []
        self.other: list[str] = []  # skipped / cancelled
        self.left_tiles = self.left_other = 0
        self.data_rows: list[str] = []
        self.data_left = 0
        feed.add_sink(self)

    def take(self, record: dict[str, Any]) -> None:
        if is_data_result(record.get("result")):
            self._data(record)  # in the data table, not on the sheet
            return
        status, key = record.get("status"), str(record.get("key", ""))
        if status in (*DONE, "failed"):
            if len(self.tiles) < MAX_TILES:
                out = smallest_output(record) if status in DONE else None
                self.tiles.append(_tile(record, out))
            else:
                self.left_tiles += 1
        elif len(self.other) < MAX_LISTED:
            why = record.get("reason") or record.get("error") or ""
            self.other.append(f"<li>{_e(status)}: {_e(key)} <i>{_e(why)}</i></li>")
        else:
            self.left_other += 1

    def finish(self) -> None:
        return None

    def discard(self) -> None:
        return None

    def thumbs(self, wanted: set[str]) -> dict[str, Mapping[str, Any]]:
        """The smallest output of each ``ok`` or ``reused`` image among the ``wanted`` keys, read
        from the manifest (only when there are such keys)."""
        if not wanted:
            return {}
        thumbs: dict[str, Mapping[str, Any]] = {}
        for record in self.feed.records_for(wanted):
            out = smallest_output(record) if record.get("status") in DONE else None
            if out is not None:
                thumbs[str(record["key"])] = out
        return thumbs

    def contact_sheet(self) -> str:
        parts = ['<h2>Contact sheet</h2><div class="sheet" id="sheet">', *self.tiles, "</div>"]
        if self.left_tiles:
            note = f"{self.left_tiles} more item(s) not shown (first {MAX_TILES})."
            parts.append(f'<p class="note">{note}</p>')
        if self.other:
            left = self.left_other
            more = f"<li>… and {left} more</li>" if left else ""
            parts.append(
                f"<details><summary>Skipped / cancelled: {len(self.other) + left}</summary>"
            )
            parts.append(f'<ul id="skipped">{"".join(self.other)}{more}</ul></details>')
        return "\n".join(parts)

    def data_table(self) -> str:
        """One row per array or CSV column of the data files: the figures and a histogram."""
        if not self.data_rows:
            return ""
        head = "".join(
            f"<th>{h}</th>"
            for h in ("input", "array / column", "count", "missing", "mean", "std", "min", "max")
        )
        parts = [
            '<h2>Data files</h2><table id="data">',
            f"<tr>{head}<th>bad cells</th><th>histogram</th></tr>",
            *self.data_rows,
            "</table>",
        ]
        if self.data_left:
            parts.append(f'<p class="note">{self.data_left} more row(s) in data_stats.csv.</p>')
        return "\n".join(parts)

    def _data(self, record: Mapping[str, Any]) -> None:
        v = data_result(record)
        if v is None:
            return
        if v["kind"] == "array":
            cols = [(f"{v.get('dtype', '')} {'x'.join(map(str, v.get('shape', [])))}", v["stats"])]
        else:
            cols = list(v.get("columns", {}).items())
        bad = v.get("bad_cells", {}) if v["kind"] == "csv" else {}
        for name, st in cols:
            if len(self.data_rows) >= MAX_TILES:
                self.data_left += 1
                continue
            figures = "".join(
                f"<td>{_fmt(st.get(k))}</td>"
                for k in ("count", "missing", "mean", "std", "min", "max")
            )
            self.data_rows.append(
                f"<tr><td>{_e(record.get('key', ''))}</td><td>{_e(name)}</td>{figures}"
                f"<td>{_e(bad.get(name, 0))}</td><td>{_bars(st.get('histogram'))}</td></tr>"
            )


def _e(value: Any) -> str:
    """``html.escape(str(value), quote=True)``, without importing :mod:`html` (its import reads
    the whole table of named entities: milliseconds at every start-up, for five characters)."""
    text = value if type(value) is str else str(value)
    # most keys and paths hold none of the five characters: no copies (this runs for every tile)
    if "&" in text or "<" in text or ">" in text or '"' in text or "'" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace('"', "&quot;").replace("'", "&#x27;")
    return text


def as_number(value: Any, default: float = 0.0) -> float:
    """``value`` as a float when it is a number (not a bool), else ``default``."""
    kind = type(value)
    if kind is int or kind is float:  # the usual case, without the isinstance checks
        return float(value)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else default


def _load_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _dup_groups(summary: Mapping[str, Any]) -> list[list[str]]:
    collected = summary.get("collected") or {}
    groups = (collected.get("near_duplicates") or {}).get("groups") or []
    return [[str(k) for k in g] for g in groups if isinstance(g, list)]


# -- totals --------------------------------------------------------------------------------------
def _totals(summary: Mapping[str, Any]) -> str:
    counts = summary.get("counts") or {}
    duration = as_number(summary.get("duration_s"))
    seen = as_number(summary.get("inputs_seen"))
    rate = f"{seen / duration:.1f}" if duration > 0 else "-"
    cells = "".join(f"<tr><th class=l>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in counts.items())
    folder = summary.get("folder_counts") or {}
    parts = [
        _banner(summary),
        '<h2>Totals</h2><table id="totals">',
        cells,
        f"<tr><th class=l>inputs seen</th><td>{_e(int(seen))}</td></tr>",
        f"<tr><th class=l>duration</th><td>{duration:.2f} s</td></tr>",
        f"<tr><th class=l>inputs/s</th><td>{rate}</td></tr></table>",
    ]
    if folder:
        shown = ", ".join(f"{_e(k)} {_e(v)}" for k, v in folder.items())
        parts.append(f"<p>Whole folder (this and earlier runs): {shown}</p>")
    return "\n".join(parts)


def _banner(summary: Mapping[str, Any]) -> str:
    notes = []
    if not summary:
        notes.append("no summary.json: the run did not start or its summary was lost")
    elif summary.get("finished") is False:
        notes.append("the run did not finish (summary written at its start only)")
    if summary.get("interrupted"):
        notes.append("the run was interrupted: some inputs were not processed")
    if summary.get("error"):
        notes.append(f"the run stopped with an error: {summary['error']}")
    return "".join(f'<p class="banner">{_e(n)}</p>' for n in notes)


# -- contact sheet -------------------------------------------------------------------------------
def smallest_output(rec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A record's smallest output (its thumbnail on the page), or None (no output)."""
    result = rec.get("result")
    outs = result.get("outputs") if isinstance(result, dict) else None
    good = [o for o in outs or () if isinstance(o, dict) and _safe_rel(o.get("path"))]
    if len(good) < 2:  # one output size (the usual case), or none
        return good[0] if good else None
    return min(good, key=lambda o: as_number(o.get("width")) * as_number(o.get("height")))


#: The characters :func:`urllib.parse.quote` never encodes, with ``/`` (``safe="/"``).
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")


def _safe_rel(path: Any) -> bool:
    ok = isinstance(path, str) and bool(path) and not path.startswith("/")
    return ok and ".." not in str(path).split("/")


def _img(out: Mapping[str, Any], key: str) -> str:
    raw = out.get("path_b64")  # a name that is not UTF-8: its exact bytes, percent-encoded
    if isinstance(raw, str):
        src = quote(base64.b64decode(raw), safe="/")
    else:
        path = str(out["path"])
        # a path of characters quote() leaves alone is its own URL (the usual case: no call)
        src = path if _URL_SAFE.fullmatch(path) else quote(path, safe="/")
    w, h = int(as_number(out.get("width"))), int(as_number(out.get("height")))
    size = f' width="{w}" height="{h}"' if w > 0 and h > 0 else ""
    return f'<img src="{_e(src)}" loading="lazy"{size} alt="{_e(key)}">'


def _tile(rec: Mapping[str, Any], out: Mapping[str, Any] | None) -> str:
    key = str(rec.get("key", ""))
    if rec.get("status") == "failed":
        err = f"<b>{_e(rec.get('error_type', 'error'))}</b> in {_e(rec.get('stage', '?'))}"
        return (
            f'<figure class="failed"><figcaption>{_e(key)}<br>{err}<br>'
            f"{_e(rec.get('error', ''))}</figcaption></figure>"
        )
    img = _img(out, key) if out is not None else "(no output)"
    dims = f" {int(as_number(out.get('width')))}x{int(as_number(out.get('height')))}" if out else ""
    if rec.get("status") == "reused":  # made by an earlier run, unchanged since
        return (
            f'<figure class="reused">{img}<figcaption>{_e(key)}{dims} <i>reused</i>'
            "</figcaption></figure>"
        )
    return f'<figure class="ok">{img}<figcaption>{_e(key)}{dims}</figcaption></figure>'


# -- numeric data files --------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    return _e("" if value is None else value)


def _bars(hist: Any) -> str:
    """A small inline SVG of a histogram's counts (the bin edges in its title)."""
    if not isinstance(hist, dict) or not hist.get("counts"):
        return ""
    counts = [as_number(c) for c in hist["counts"]]
    top = max(counts) or 1.0
    w = 2.0
    bars = "".join(
        f'<rect x="{i * w:.0f}" y="{20 - 20 * c / top:.1f}" width="{w - 0.2:.1f}" '
        f'height="{20 * c / top:.1f}"/>'
        for i, c in enumerate(counts)
    )
    low, width = as_number(hist.get("low")), as_number(hist.get("width"))
    title = f"{len(counts)} bins of {width:g} from {low:g}"
    return (
        f'<svg class="hist" width="{len(counts) * w:.0f}" height="20" role="img">'
        f"<title>{_e(title)}</title>{bars}</svg>"
    )


# -- charts --------------------------------------------------------------------------------------
def _rates(t: Sequence[float], done: Sequence[float]) -> list[float]:
    """Items/s between samples, from a cumulative series (the run starts at t=0 with 0 done)."""
    rates, prev_t, prev_d = [], 0.0, 0.0
    for ti, di in zip(t, done, strict=False):
        rates.append((di - prev_d) / (ti - prev_t) if ti > prev_t else 0.0)
        prev_t, prev_d = ti, di
    return rates


def _charts(timeline: Mapping[str, Any]) -> str:
    t = [as_number(v) for v in timeline.get("t") or ()]
    stages = timeline.get("stages") or {}
    throughput = {
        n: _rates(t, [as_number(v) for v in s.get("done") or ()]) for n, s in stages.items()
    }
    inbox = {n: [as_number(v) for v in s.get("inbox") or ()] for n, s in stages.items()}
    head = "<h2>Throughput per stage (items/s)</h2>\n"
    queues = "\n<h2>Queue fill per stage (items waiting in the inbox)</h2>\n"
    return (
        head + _line_chart("throughput", t, throughput) + queues + _line_chart("queues", t, inbox)
    )


def _line_chart(chart_id: str, t: Sequence[float], series: Mapping[str, Sequence[float]]) -> str:
    t_max = max(t, default=0.0) or 1.0
    y_max = max((max(s, default=0.0) for s in series.values()), default=0.0) or 1.0
    lines, legend = [], []
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = " ".join(
            f"{PAD + x / t_max * (W - 2 * PAD):.1f},{H - PAD - y / y_max * (H - 2 * PAD):.1f}"
            for x, y in zip(t, ys, strict=False)
        )
        if pts:
            lines.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}">'
                f"<title>{_e(name)}</title></polyline>"
            )
        legend.append(f'<span style="color:{colour}">■ {_e(name)}</span>')
    axes = (
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#888"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>'
        f'<text x="{PAD - 4}" y="{PAD}" text-anchor="end" font-size="11">{y_max:.3g}</text>'
        f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end" font-size="11">0</text>'
        f'<text x="{W - PAD}" y="{H - PAD + 16}" text-anchor="end" font-size="11">'
        f"{t_max:.3g} s</text>"
    )
    empty = "" if lines else f'<text x="{W // 2}" y="{H // 2}">no samples</text>'
    return (
        f'<svg class="chart" id="{chart_id}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'role="img">{axes}{"".join(lines)}{empty}</svg>'
        f'<div class="legend">{"".join(legend)}</div>'
    )


# -- advice and near-duplicates ------------------------------------------------------------------
ADVICE_COLUMNS = (  # heading, stage figure, format
    ("items", "items", "{:.0f}"),
    ("failed", "failed", "{:.0f}"),
    ("items/s", "items_per_s", "{:.1f}"),
    ("busy %", "utilisation", "{:.0%}"),
    ("inbox wait s", "wait_inbox", "{:.2f}"),
    ("outbox block s", "blocked_outbox", "{:.2f}"),
    ("cpu/busy", "cpu_per_busy", "{:.2f}"),
    ("cores", "parallelism", "{:.2f}"),
    ("core wait", "core_wait", "{:.0%}"),
)


def _advice(summary: Mapping[str, Any]) -> str:
    figures = {s.get("name"): s for s in summary.get("stages") or () if isinstance(s, dict)}
    top = summary.get("bottleneck")
    head = "<h2>Bottleneck and advice</h2>"
    if isinstance(top, dict):
        head += (
            f'<p id="bottleneck">Bottleneck: <b>{_e(top.get("name"))}</b> ({_e(top.get("kind"))}, '
            f"{_e(top.get('workers'))} workers, busy {as_number(top.get('utilisation')):.0%}, "
            f"{as_number(top.get('items_per_s')):.1f} items/s)</p>"
        )
    cols = "".join(f"<th>{_e(c[0])}</th>" for c in ADVICE_COLUMNS)
    rows = [
        '<table id="advice"><tr><th class=l>stage</th><th class=l>kind</th><th>workers</th>'
        f"{cols}<th class=l>verdict</th><th class=l>reason</th><th class=l>suggestion</th></tr>"
    ]
    for adv in (a for a in summary.get("advice") or () if isinstance(a, dict)):
        fig = adv.get("figures") or figures.get(adv.get("stage"), {})  # the verdict's own
        nums = "".join(
            f"<td>{f.format(as_number(fig[k])) if fig.get(k) is not None else '-'}</td>"
            for _, k, f in ADVICE_COLUMNS
        )
        rows.append(
            f"<tr><td class=l>{_e(adv.get('stage'))}</td><td class=l>{_e(adv.get('stage_kind'))}"
            f"</td><td>{_e(adv.get('workers'))}</td>{nums}<td class=l>{_e(adv.get('kind'))}</td>"
            f"<td class=l>{_e(adv.get('reason'))}</td><td class=l>{_e(adv.get('suggested_kind'))}"
            f" x {_e(adv.get('suggested_workers'))}</td></tr>"
        )
    return head + "\n".join(rows) + "</table>"


def _dup_distance(summary: Mapping[str, Any]) -> int | None:
    distance = ((summary.get("collected") or {}).get("near_duplicates") or {}).get("max_distance")
    return distance if isinstance(distance, int) else None


def _duplicates(
    groups: list[list[str]], thumbs: Mapping[str, Mapping[str, Any]], distance: int | None
) -> str:
    if not groups:
        return '<h2>Near-duplicates</h2><p id="duplicates">No near-duplicate groups.</p>'
    parts = [f"<h2>Near-duplicates ({len(groups)} groups)</h2>"]
    if distance is not None:
        parts.append(
            f'<p id="duplicates-rule">Every two images of a group have difference hashes within '
            f"{distance} bits of each other (groups do not chain).</p>"
        )
    parts.append('<div id="duplicates">')
    for group in groups[:MAX_LISTED]:
        figs = [
            f"<figure>{_img(thumbs[k], k) if k in thumbs else ''}<figcaption>{_e(k)}"
            "</figcaption></figure>"
            for k in group[:GROUP_SHOWN]
        ]
        if len(group) > GROUP_SHOWN:
            more = len(group) - GROUP_SHOWN
            figs.append(f'<p class="note">… and {more} more in this group (summary.json)</p>')
        parts.append(f'<div class="group">{"".join(figs)}</div><hr>')
    if len(groups) > MAX_LISTED:
        parts.append(f"<p>… and {len(groups) - MAX_LISTED} more groups</p>")
    return "\n".join(parts) + "</div>"
