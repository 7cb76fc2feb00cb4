"""report.html: one self-contained page (no network: plots are inline SVG, thumbnails are data: URIs).

Every number the page shows from summary.json carries ``data-k="<key>"`` (and the value in full in
``data-v``), so a test can read the page back and compare it with summary.json. A script at the end marks
``<body data-images="loaded/total">`` once every image has loaded, for headless checks.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os

import numpy as np

__all__ = ["write_report"]

THUMB = 96

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;max-width:1200px}
h1{margin:0 0 8px} h2{margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.verdict{display:inline-block;padding:6px 14px;border-radius:6px;font-weight:700;color:#fff}
.pass{background:#2f8f46}.fail{background:#c0392b}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px}.cell{width:100px;font-size:11px;overflow:hidden}
.cell img{width:96px;height:96px;object-fit:contain;background:#f3f3f3;display:block}
.neuron{display:flex;gap:16px;align-items:flex-start;margin:10px 0}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:320px}
.bad{color:#c0392b;font-weight:600}
"""


def _num(key: str, value, fmt: str = ".4g") -> str:
    if value is None:
        return f'<span data-k="{html.escape(key)}" data-v="null">n/a</span>'
    text = format(value, fmt) if isinstance(value, float) else str(value)
    return f'<span data-k="{html.escape(key)}" data-v="{html.escape(repr(value))}">{text}</span>'


def _p(key: str, p: float, resamples: int) -> str:
    floor = 1.0 / (resamples + 1)
    # the smallest p a null of R draws can give is 1 / (R + 1)
    shown = f"p &le; {floor:.2g}" if p <= floor * (1 + 1e-9) else f"p = {p:.3g}"
    return f'<span data-k="{html.escape(key)}" data-v="{p!r}">{shown}</span>'


def _placeholder(text: str) -> str:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{THUMB}" height="{THUMB}">'
        f'<rect width="100%" height="100%" fill="#eee"/><text x="50%" y="50%" font-size="11" '
        f'text-anchor="middle" fill="#888">{html.escape(text)}</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


class _Thumbs:
    """Thumbnails as data: URIs, read from the night's source (by id) or from a local reference path."""

    def __init__(self, source):
        self.items = {it.id: it for it in source} if source is not None else {}
        self.source = source
        self.cache: dict = {}

    def __call__(self, item_id: str, uri: str) -> str:
        key = (item_id, uri)
        if key not in self.cache:
            self.cache[key] = self._make(item_id, uri)
        return self.cache[key]

    def _make(self, item_id, uri) -> str:
        from PIL import Image

        from ..io.decode import decode_image

        try:
            if item_id in self.items and self.source is not None:
                arr = decode_image(self.source.read(self.items[item_id]))
            elif uri and os.path.isfile(uri):
                arr = decode_image(uri)
            else:
                return _placeholder("not readable")
            img = Image.fromarray(arr)
            img.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        except Exception:  # a thumbnail never stops the report
            return _placeholder("unreadable")


def _cell(thumbs, item_id, uri, caption="") -> str:
    name = html.escape(os.path.basename(str(uri)) or str(item_id))
    cap = f"<br>{html.escape(caption)}" if caption else ""
    return (
        f'<div class="cell" title="{html.escape(str(uri))}"><img alt="{name}" src="{thumbs(item_id, uri)}">'
        f"{name}{cap}</div>"
    )


def _match_label(x: dict) -> str:
    """How a night image matches its reference copy: pHash distance, embedding cosine or both."""
    parts = [f"distance {x['distance']}" if x.get("distance") is not None else None]
    parts.append(f"cosine {x['cosine']:.3f}" if x.get("cosine") is not None else None)
    return "reference, " + ", ".join(p for p in parts if p)


def _bars_svg(title: str, labels, values, bands, ps, resamples: int) -> str:
    """Horizontal bars (the night's statistic) over the null's p5-p99 band (grey) and median (tick)."""
    w, row, left = 760, 26, 200
    hi = max([*values, *(b["p99"] for b in bands), 1e-12]) * 1.1
    h = row * len(labels) + 30
    x = lambda v: left + (w - left - 120) * (v / hi)  # noqa: E731
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">']
    for i, (lab, v, b, p) in enumerate(zip(labels, values, bands, ps)):
        y = 20 + i * row
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{html.escape(str(lab))[:28]}</text>')
        parts.append(
            f'<rect x="{x(b["p5"]):.1f}" y="{y}" width="{max(1.0, x(b["p99"]) - x(b["p5"])):.1f}" height="18" fill="#ccd3dd"/>'
        )
        parts.append(
            f'<line x1="{x(b["median"]):.1f}" x2="{x(b["median"]):.1f}" y1="{y}" y2="{y + 18}" stroke="#555"/>'
        )
        colour = "#c0392b" if p < 0.01 else "#3b6fb6"
        parts.append(
            f'<rect x="{left}" y="{y + 5}" width="{max(1.0, x(v) - left):.1f}" height="8" fill="{colour}"/>'
        )
        parts.append(f'<text x="{w - 115}" y="{y + 14}" font-size="11">{v:.3g} (p {p:.2g})</text>')
    parts.append(
        f'<text x="{left}" y="12" font-size="11" fill="#555">{html.escape(title)}; grey: null p5-p99 at the night\'s size, tick: null median ({resamples} draws)</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _hist_svg(ref_counts, night_counts) -> str:
    w, h = 320, 140
    r = np.asarray(ref_counts, dtype=np.float64)
    n = np.asarray(night_counts, dtype=np.float64)
    r, n = r / max(r.sum(), 1), n / max(n.sum(), 1)
    top = max(r.max(initial=0), n.max(initial=0), 1e-12)

    def line(v, colour):
        pts = " ".join(
            f"{10 + (w - 20) * i / max(len(v) - 1, 1):.1f},{h - 20 - (h - 40) * x / top:.1f}"
            for i, x in enumerate(v)
        )
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>'

    return (
        f'<svg width="{w}" height="{h}" role="img" aria-label="histogram">'
        f'<line x1="10" x2="{w - 10}" y1="{h - 20}" y2="{h - 20}" stroke="#999"/>{line(r, "#3b6fb6")}{line(n, "#c0392b")}'
        f'<text x="10" y="12" font-size="11" fill="#3b6fb6">reference</text>'
        f'<text x="90" y="12" font-size="11" fill="#c0392b">tonight</text>'
        f'<text x="10" y="{h - 4}" font-size="10" fill="#777">activation bins (the reference ranges)</text></svg>'
    )


def _trend_svg(history) -> str:
    rows = history.to_pylist()
    w, h = 760, 180
    if len(rows) < 1:
        return "<p>No history yet.</p>"
    emd = [r["emd"] for r in rows]
    logp = [-math.log10(max(r["drift_p"], 1e-12)) for r in rows]
    top_e, top_p = max(max(emd), 1e-12), max(max(logp), 2.0)

    def pts(vals, top):
        k = max(len(vals) - 1, 1)
        return " ".join(
            f"{40 + (w - 80) * i / k:.1f},{h - 30 - (h - 60) * v / top:.1f}" for i, v in enumerate(vals)
        )

    y2 = h - 30 - (h - 60) * 2 / top_p
    marks = "".join(
        f'<circle cx="{40 + (w - 80) * i / max(len(rows) - 1, 1):.1f}" cy="{h - 30 - (h - 60) * v / top_e:.1f}" r="3" '
        f'fill="{"#c0392b" if r["verdict"] == "fail" else "#2f8f46"}"/>'
        for i, (v, r) in enumerate(zip(emd, rows))
    )
    return (
        f'<svg width="{w}" height="{h}" role="img" aria-label="trend">'
        f'<polyline fill="none" stroke="#3b6fb6" stroke-width="2" points="{pts(emd, top_e)}"/>{marks}'
        f'<polyline fill="none" stroke="#999" stroke-dasharray="4 3" points="{pts(logp, top_p)}"/>'
        f'<line x1="40" x2="{w - 40}" y1="{y2:.1f}" y2="{y2:.1f}" stroke="#c0392b" stroke-dasharray="2 4"/>'
        f'<text x="40" y="14" font-size="11" fill="#3b6fb6">overall EMD per night (dots: verdict)</text>'
        f'<text x="330" y="14" font-size="11" fill="#777">dashed: -log10 drift p (red line: p = 0.01)</text>'
        f'<text x="40" y="{h - 8}" font-size="10">{html.escape(rows[0]["time"])}</text>'
        f'<text x="{w - 160}" y="{h - 8}" font-size="10">{html.escape(rows[-1]["time"])}</text></svg>'
    )


def write_report(path, result, ref, night_dir, history=None, source=None) -> None:
    """Write the report of ``result`` (a `CheckResult`) to ``path``."""
    thumbs = _Thumbs(source)
    s, c, d = result.to_dict(), result.counts, result.drift
    R = d["resamples"]
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>neuroprint check: {html.escape(result.verdict)}</title>"
    ]
    out.append(f"<style>{_CSS}</style></head><body>")
    out.append(
        f'<h1>Nightly check <span class="verdict {result.verdict}" data-k="verdict" data-v="{result.verdict}">'
        f"{result.verdict.upper()}</span></h1>"
    )
    out.append(
        f"<p>{html.escape(str(night_dir))} against {html.escape(str(ref.path))} ({_num('settings.reference_images', s['settings']['reference_images'])} reference images), {html.escape(result.created)}</p>"
    )
    out.append(
        "<table><tr><th>images in</th><th>processed</th><th>failed</th><th>drift p</th><th>overall EMD (bins)</th>"
        "<th>near-duplicates</th><th>copies of reference images</th><th>outliers</th></tr><tr>"
        f"<td>{_num('counts.images_in', c['images_in'])}</td><td>{_num('counts.processed', c['processed'])}</td>"
        f"<td>{_num('counts.failed', c['failed'])}</td><td>{_p('drift.p', d['p'], R)}</td>"
        f"<td>{_num('drift.emd', d['emd'])} ({_p('drift.emd_p', d['emd_p'], R)})</td>"
        f"<td>{_num('counts.duplicates', c['duplicates'])}</td><td>{_num('counts.duplicates_reference', c['duplicates_reference'])}</td>"
        f"<td>{_num('counts.outliers', c['outliers'])}</td></tr></table>"
    )
    out.append("<h2>Rules</h2><table><tr><th>rule</th><th>value</th><th>result</th></tr>")
    for i, r in enumerate(result.rules):
        res = '<span class="bad">fails</span>' if r["fails"] else "passes"
        out.append(
            f"<tr><td>{html.escape(r['rule'])}</td><td>{_num(f'rules.{i}.value', r['value'])}</td><td>{res}</td></tr>"
        )
    out.append("</table>")
    out.append(
        "<h2>Quality flags</h2><table><tr>"
        + "".join(f"<th>{html.escape(f)}</th>" for f in c["flags"])
        + "</tr><tr>"
    )
    out.append(
        "".join(f"<td>{_num(f'counts.flags.{f}', v)}</td>" for f, v in c["flags"].items()) + "</tr></table>"
    )
    # drift per layer
    layers = d["layers"]
    out.append("<h2>Drift per layer</h2>")
    out.append(
        f"<p>Family-wise drift {_p('drift.p', d['p'], R)} (max-statistic over the overall EMD and every layer's "
        f"EMD and FD); {d['neurons_p_below_0.01']} of {d['neurons']} neurons at p &lt; 0.01. Null: {R} two-sample "
        f"draws of {d['n']} and {d['N']} images from a pool of {d['pool']} reference images.</p>"
    )
    out.append(
        _bars_svg(
            "EMD (bins), mean over the layer's neurons",
            [x["layer"] for x in layers],
            [x["emd"] for x in layers],
            [x["emd_null"] for x in layers],
            [x["emd_p"] for x in layers],
            R,
        )
    )
    out.append(
        _bars_svg(
            "FD of the layer-gaussian",
            [x["layer"] for x in layers],
            [x["fd"] for x in layers],
            [x["fd_null"] for x in layers],
            [x["fd_p"] for x in layers],
            R,
        )
    )
    out.append("<table><tr><th>layer</th><th>EMD</th><th>EMD p</th><th>FD</th><th>FD p</th></tr>")
    for i, x in enumerate(layers):
        out.append(
            f"<tr><td>{html.escape(x['layer'])}</td><td>{_num(f'drift.layers.{i}.emd', x['emd'])}</td>"
            f"<td>{_p(f'drift.layers.{i}.emd_p', x['emd_p'], R)}</td><td>{_num(f'drift.layers.{i}.fd', x['fd'])}</td>"
            f"<td>{_p(f'drift.layers.{i}.fd_p', x['fd_p'], R)}</td></tr>"
        )
    out.append("</table>")
    out.append("<h2>Most drifting neurons and the images that drive them</h2>")
    for i, t in enumerate(result.top_neurons):
        out.append('<div class="neuron"><div>')
        out.append(
            f"<b>{html.escape(t['layer'])} #{t['channel']}</b>: EMD {_num(f'top_neurons.{i}.emd', t['emd'])} bins "
            f"(null mean {t['null_mean']:.3g}), {_p(f'top_neurons.{i}.p', t['p'], R)}, mean {t['direction']}<br>"
        )
        out.append(_hist_svg(t["reference_hist"], t["night_hist"]) + "</div><div class='grid'>")
        out.extend(_cell(thumbs, g["id"], g["uri"], f"{g['contribution']:+.2f} sd") for g in t["driving"][:8])
        out.append("</div></div>")
    out.append(
        "<h2>Images that drive the drift</h2><p>Mean contribution (in reference standard deviations) to the shift of the neurons above.</p><div class='grid'>"
    )
    out.extend(_cell(thumbs, g["id"], g["uri"], f"{g['score']:+.2f} sd") for g in result.driving)
    out.append("</div>")
    out.append("<h2>Top outliers</h2><div class='grid'>")
    out.extend(
        _cell(thumbs, o["id"], o["uri"], f"#{o['rank']} score {o['score']:.3g}") for o in result.outliers
    )
    out.append("</div>")
    out.append("<h2>Flagged images</h2>")
    for f, items in s["settings"]["flagged_examples"].items():
        if items:
            out.append(f"<h3>{html.escape(f)} ({c['flags'][f]})</h3><div class='grid'>")
            out.extend(_cell(thumbs, g["id"], g["uri"]) for g in items)
            out.append("</div>")
    out.append("<h2>Near-duplicates</h2>")
    for g in result.duplicates["within"][:20]:
        out.append("<div class='grid'>" + "".join(_cell(thumbs, x["id"], x["uri"]) for x in g) + "</div><hr>")
    if result.duplicates["reference"]:
        out.append("<h3>Copies of reference images</h3>")
        for x in result.duplicates["reference"][:20]:
            out.append(
                "<div class='grid'>"
                + _cell(thumbs, x["id"], x["uri"], "tonight")
                + _cell(thumbs, x["reference_id"], x["reference_uri"], _match_label(x))
                + "</div>"
            )
    out.append("<h2>Trend over past nights</h2>")
    out.append(_trend_svg(history) if history is not None else "<p>No --history given.</p>")
    out.append("<h2>Settings and thresholds</h2>")
    settings = {k: v for k, v in s["settings"].items() if k != "flagged_examples"}
    out.append(
        f"<pre>{html.escape(json.dumps({'settings': settings, 'thresholds': s['thresholds']}, indent=2))}</pre>"
    )
    out.append(
        "<script>window.addEventListener('load',function(){var im=document.images,ok=0;"
        "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
        "document.body.setAttribute('data-images',ok+'/'+im.length);});</script></body></html>"
    )
    from ..jobs.job import _write_atomic

    _write_atomic(path, lambda tmp: tmp.write_text("".join(out), encoding="utf-8"))
