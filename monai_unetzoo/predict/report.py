"""``report.html``: one self-contained page per batch (no network access: inline CSS and script, previews linked
by relative paths), rewritten after every case so that it can be opened while a long batch runs.

Content: the run's status and counts, a table with one row per case (thumbnail linking to the preview, status,
QC flags with their reasons, volume per structure, confidence, seconds; every column sortable by a click on its
header, numbers numerically, empty cells last), what each QC flag means, and the provenance (``provenance.json``).
While the batch runs the page reloads itself every :data:`RUNNING_REFRESH_SECONDS`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from ..volume_io import atomic_output_path

__all__ = ["render_report_html", "write_report", "report_columns", "RUNNING_REFRESH_SECONDS"]

RUNNING_REFRESH_SECONDS = 30

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#eee;cursor:pointer;user-select:none;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img.thumb{max-width:180px;max-height:120px;display:block}
tr.flagged td{background:#fff4e0} tr.failed td{background:#fde0e0}
.flag{display:inline-block;background:#d9822b;color:#fff;border-radius:3px;padding:0 4px;margin:1px}
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:30em}
"""

# Sorting: by each cell's data-sort value; numbers numerically, text otherwise, empty cells last either way.
_SCRIPT = """
function unetzooSort(th){
  const table=th.closest('table'), body=table.tBodies[0], col=th.cellIndex;
  const asc=!th.classList.contains('sorted-asc');
  for(const h of table.tHead.rows[0].cells){h.classList.remove('sorted-asc','sorted-desc');}
  th.classList.add(asc?'sorted-asc':'sorted-desc');
  const key=r=>r.cells[col].dataset.sort;
  const rows=Array.from(body.rows);
  rows.sort((a,b)=>{
    const x=key(a), y=key(b);
    if(x===''||y===''){return (x==='')-(y==='');}
    const nx=Number(x), ny=Number(y);
    const c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
    return asc?c:-c;
  });
  for(const r of rows){body.appendChild(r);}
}
"""

_FLAG_HELP = {
    "empty": "a structure the bundle expects has no voxel",
    "volume": "a structure's volume is outside the training labels' range (q0.5..q99.5 widened by a margin)",
    "confidence": "low network confidence inside the structures compared with the validation set",
    "pieces": "a structure that is one piece in every training label came out in several",
    "geometry": "voxel spacing or field of view far from the training images",
}


def report_columns(columns: Sequence[str]) -> list[str]:
    """The summary columns shown in the table: status, QC, sizes per structure (not voxel counts or intensity
    statistics, which stay in ``summary.csv``), confidence and time."""
    keep = ["case", "status", "qc_flags", "error"]
    keep += [c for c in columns if c.endswith(("_mL", "_mm2"))]
    keep += [c for c in ("mean_top_probability", "low_confidence_fraction", "seconds") if c in columns]
    return [c for c in keep if c in columns or c in ("case", "status", "error")]


def _cell(column: str, row: dict[str, Any]) -> str:
    value = str(row.get(column, "") or "")
    if column == "qc_flags":
        shown = "".join(f'<span class="flag">{html.escape(f)}</span>' for f in value.split(";") if f)
        reasons = html.escape(str(row.get("qc_reasons", "") or ""))
        return f'<td data-sort="{html.escape(value)}" title="{reasons}">{shown}<br>{reasons}</td>'
    try:
        float(value)
        numeric = value != ""
    except ValueError:
        numeric = False
    cls = ' class="num"' if numeric else ""
    return f'<td{cls} data-sort="{html.escape(value)}">{html.escape(value)}</td>'


def _thumbnail(row: dict[str, Any]) -> str:
    rel = str(row.get("preview", "") or "")
    if not rel:
        return '<td data-sort=""></td>'
    url = html.escape(quote(rel, errors="surrogateescape"))  # non-UTF-8 file names: their bytes, %-escaped
    alt = html.escape(f"preview of {row.get('case', '')}")
    return f'<td data-sort="{html.escape(rel)}"><a href="{url}"><img class="thumb" src="{url}" alt="{alt}"></a></td>'


def _row_html(row: dict[str, Any], columns: list[str]) -> str:
    cls = "failed" if row.get("status") == "failed" else ("flagged" if row.get("qc") == "flagged" else "")
    cells = _thumbnail(row) + "".join(_cell(c, row) for c in columns)
    return f'<tr class="{cls}" data-case="{html.escape(str(row.get("case", "")))}">{cells}</tr>'


def render_report_html(rows: Sequence[dict[str, Any]], columns: Sequence[str], provenance: dict[str, Any]) -> str:
    """The page for the summary ``rows`` (dicts of the summary's ``columns``, in case order) and ``provenance``."""
    shown = report_columns(columns)
    bundle = provenance.get("bundle", {})
    running = provenance.get("status") == "running"
    flagged = sum(1 for r in rows if r.get("qc") == "flagged")
    counts = ", ".join(f"{v} {k}" for k, v in provenance.get("counts", {}).items())
    refresh = f'<meta http-equiv="refresh" content="{RUNNING_REFRESH_SECONDS}">' if running else ""
    head = "".join(f'<th onclick="unetzooSort(this)">{html.escape(c)}</th>' for c in ["preview", *shown])
    body = "\n".join(_row_html(r, shown) for r in rows)
    help_items = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in _FLAG_HELP.items())
    title = f"unetzoo predict: {bundle.get('name', '')} {bundle.get('version', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>{html.escape(title)}</title>
<style>{_STYLE}</style><script>{_SCRIPT}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p id="run-status">Status: <b>{html.escape(str(provenance.get("status", "")))}</b>; {len(rows)} of
{provenance.get("cases_total", len(rows))} case(s) reported ({html.escape(counts)}); <b>{flagged}</b> flagged for
review. Started {html.escape(str(provenance.get("start_time", "")))}, ended
{html.escape(str(provenance.get("end_time") or "-"))}.{" This page reloads itself while the batch runs." if running else ""}</p>
<p>Click a column header to sort; click a thumbnail for the full preview. Flags never change a segmentation.</p>
<table id="summary"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<h2>QC flags</h2><ul>{help_items}</ul>
<h2>Provenance</h2><details open><pre id="provenance">{html.escape(json.dumps(provenance, indent=2, default=str))}</pre></details>
</body></html>
"""


def write_report(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], provenance: dict[str, Any]) -> None:
    """Write :func:`render_report_html` to ``path`` atomically."""
    with atomic_output_path(path) as tmp:
        tmp.write_text(render_report_html(rows, columns, provenance), encoding="utf-8", errors="backslashreplace")
