"""Build one self-contained HTML report: CSS, figures and images are all inline.

Shared by the data report (`carmask.apps.eda`) and the evaluation report. Nothing here fetches
anything: fonts are the system's, pictures are `data:` URIs, so the file can be mailed or opened
offline.
"""

from __future__ import annotations

import base64
import html
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from carmask.apps.cutout import MAX_SIDE
from carmask.util.atomic import write_bytes

CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--muted:#5f6b7a;--line:#e3e6eb;--accent:#2f6fde;
--zebra:#f8f9fb;--bad:#c0352b;--warn:#b7791f;--ok:#2f855a}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);line-height:1.5;font:15px/1.5 system-ui,
-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:linear-gradient(120deg,#1d2b4f,#2f6fde);color:#fff;padding:28px 20px 24px}
header h1{margin:0;font-size:1.7rem;font-weight:650}
header p{margin:.3rem 0 0;opacity:.85}
main{max-width:1180px;margin:0 auto;padding:18px 14px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:18px 20px;margin:0 0 18px;box-shadow:0 1px 2px rgba(20,30,50,.04)}
h2{margin:0 0 .2rem;font-size:1.2rem}
h3{margin:1rem 0 .4rem;font-size:1rem;color:var(--muted)}
.caption{color:var(--muted);margin:.1rem 0 .9rem;max-width:80ch}
.grid{display:grid;gap:14px;grid-template-columns:repeat(auto-fill,minmax(260px,1fr))}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(420px,1fr))}
.cards{display:grid;gap:10px;grid-template-columns:repeat(auto-fill,minmax(150px,1fr))}
.card{background:var(--zebra);border:1px solid var(--line);border-radius:10px;padding:10px 12px}
.card .v{font-size:1.45rem;font-weight:650;overflow-wrap:anywhere}
.card .k{color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.04em}
.card .n{color:var(--muted);font-size:.8rem}
figure{margin:0}
figure img,section>img,.fig img{max-width:100%;height:auto;display:block;border-radius:8px}
figcaption{font-size:.82rem;color:var(--muted);margin-top:4px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{padding:6px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#eef1f5;font-weight:600;position:sticky;top:0}
tbody tr:nth-child(even){background:var(--zebra)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:99px;font-size:.75rem;color:#fff}
.badge.error{background:var(--bad)}.badge.warning{background:var(--warn)}.badge.ok{background:var(--ok)}
.note{padding:10px 14px;border-radius:8px;background:#eaf5ee;color:#22543d}
.note.warn{background:#fdf3e1;color:#744210}
nav.toc{font-size:.85rem;margin:0 0 14px;line-height:1.9}
nav.toc a{color:var(--accent);text-decoration:none;white-space:nowrap}
details summary{cursor:pointer;color:var(--accent);font-weight:600}
code{font-size:.85em;background:#eef1f5;padding:1px 4px;border-radius:4px}
footer{color:var(--muted);font-size:.8rem;text-align:center;padding:10px}
@media (max-width:640px){header{padding:18px 14px}header h1{font-size:1.3rem}
section{padding:14px 12px}.grid.wide{grid-template-columns:1fr}.pair{grid-template-columns:1fr}}
"""


class Raw(str):
    """A string that is already HTML: `table_html` and `esc` leave it as it is."""


def esc(value: object) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def page(title: str, body: str, subtitle: str = "", footer: str = "") -> str:
    """A full HTML document around `body` (already HTML)."""
    sub = f"<p>{esc(subtitle)}</p>" if subtitle else ""
    foot = f"<footer>{esc(footer)}</footer>" if footer else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1>{sub}</header><main>{body}</main>{foot}</body></html>\n")


def section(title: str, content: str, caption: str = "", anchor: str | None = None) -> str:
    anchor_attr = f' id="{esc(anchor)}"' if anchor else ""
    cap = f'<p class="caption">{esc(caption)}</p>' if caption else ""
    return f"<section{anchor_attr}><h2>{esc(title)}</h2>{cap}{content}</section>"


def cards(items: Iterable[tuple[str, object] | tuple[str, object, str]]) -> str:
    """Headline numbers: (label, value) or (label, value, note)."""
    out = []
    for label, value, *note in items:
        extra = f'<div class="n">{esc(note[0])}</div>' if note and note[0] else ""
        out.append(f'<div class="card"><div class="k">{esc(label)}</div>'
                   f'<div class="v">{esc(value)}</div>{extra}</div>')
    return f'<div class="cards">{"".join(out)}</div>'


def img_tag(uri: str, alt: str = "", caption: str = "", attrs: Mapping[str, object] | None = None) -> str:
    extra = "".join(f' {esc(k)}="{esc(v)}"' for k, v in (attrs or {}).items())
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure{extra}><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def figure_to_data_uri(fig, dpi: int = 110) -> str:
    """Render a matplotlib figure to a PNG data URI (Agg, whatever the session's backend) and close it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    if "matplotlib.pyplot" in sys.modules:  # only pyplot keeps figures alive; bare Figures are freed
        sys.modules["matplotlib.pyplot"].close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_to_data_uri(array: np.ndarray, format: str = "jpeg", max_width: int | None = None,
                      quality: int = 82) -> str:
    """Encode an RGB/grey uint8 array (bool and [0,1] floats are accepted too) as a data URI."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    if max_width and array.shape[1] > max_width:
        height = max(1, round(array.shape[0] * max_width / array.shape[1]))
        array = cv2.resize(array, (max_width, height), interpolation=cv2.INTER_AREA)
    fmt = format.lower().replace("jpg", "jpeg")
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"format must be 'jpeg' or 'png', got {format!r}")
    if fmt == "jpeg" and max(array.shape[:2]) > MAX_SIDE["jpg"]:
        fmt = "png"  # a picture JPEG cannot hold (65500 a side); the URI names what it is
    buffer = io.BytesIO()
    options = {"quality": quality, "optimize": True} if fmt == "jpeg" else {"optimize": True}
    Image.fromarray(array).save(buffer, format=fmt.upper(), **options)
    return f"data:image/{fmt};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table_html(data: pd.DataFrame | Sequence[Mapping] | Sequence[Sequence],
               columns: Sequence[str] | None = None, *, formats: Mapping[str, str] | None = None,
               max_rows: int | None = None, index: bool = False) -> str:
    """An HTML table; every cell escaped except `Raw` ones, numbers right-aligned.

    `data` is a DataFrame, a list of dicts or a list of rows (then pass `columns`). `formats` maps
    a column to a format spec such as ".2%". Rows past `max_rows` are counted in a last line.
    """
    if isinstance(data, pd.DataFrame):
        frame = data.reset_index() if index else data
        frame = frame[list(columns)] if columns is not None else frame
    elif len(data) and isinstance(data[0], Mapping):
        frame = pd.DataFrame(list(data))
        frame = frame.reindex(columns=list(columns)) if columns is not None else frame
    else:
        frame = pd.DataFrame([list(row) for row in data], columns=list(columns) if columns else None)
    formats = formats or {}
    shown = frame if max_rows is None else frame.head(max_rows)
    numeric = {c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])}

    def cell(column: str, value: object) -> str:
        number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        if number and pd.isna(value):
            text = "–"
        elif column in formats and number:
            text = format(value, formats[column])
        else:
            text = esc(value)
        return f'<td class="num">{text}</td>' if number else f"<td>{text}</td>"

    head = "".join(f'<th class="num">{esc(c)}</th>' if c in numeric else f"<th>{esc(c)}</th>"
                   for c in frame.columns)
    body = "".join("<tr>" + "".join(cell(c, v) for c, v in zip(frame.columns, row)) + "</tr>"
                   for row in shown.itertuples(index=False, name=None))
    more = len(frame) - len(shown)
    if more > 0:
        body += f'<tr><td colspan="{len(frame.columns)}">… and {more} more rows</td></tr>'
    return (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (236, 72, 153),
            alpha: float = 0.35, thickness: int = 2) -> np.ndarray:
    """`image` (RGB or grey) with `mask` tinted in `color` and its outline drawn; an RGB uint8 copy.

    A mask of another size is resized to the image's; float masks are thresholded at one half.
    """
    rgb = np.asarray(image)
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    rgb = rgb.astype(np.uint8, copy=True)
    mask = np.asarray(mask)
    if mask.dtype == bool:
        soft = mask.astype(np.float32)
    else:  # 0..1 floats or 0..255 values
        soft = mask.astype(np.float32) / (1.0 if mask.max(initial=0) <= 1 else 255.0)
    if soft.shape != rgb.shape[:2]:
        soft = cv2.resize(soft, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    binary = soft >= 0.5
    tint = np.array(color, np.float32)
    rgb[binary] = (rgb[binary].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, tuple(int(c) for c in color), thickness, lineType=cv2.LINE_AA)
    return rgb


def write_html(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically: a reader sees the old file or the new one, never half."""
    return write_bytes(path, text.encode("utf-8"))
