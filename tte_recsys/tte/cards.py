"""Composite item cards (CompCap-style): a rendered image of an item's title, attributes and a
small bar chart, with a caption that is exact by construction (it states what was drawn).

Gives items without images a real image for the multimodal path, and image-caption pairs for
embedder training, offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tte_recsys.artifacts import atomic_path
from tte_recsys.tte.items import ItemInput

__all__ = ["render_card"]

_W, _H, _PAD, _LINE = 320, 240, 10, 14
_CHART_H = 70


def _fit(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_card(item: ItemInput, out_path: str | Path, chart: Mapping[str, int] | None = None) -> str:
    """Draw ``item`` to a PNG at ``out_path`` (atomically); return the caption of exactly what is drawn.

    Args:
        item: its ``fields`` are drawn one line each (lists joined), truncated to fit.
        out_path: the PNG to write.
        chart: optional ``label -> count`` (e.g. rating histogram), drawn as bars scaled to the max.
    """
    img = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lines = []
    for name, value in item.fields.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        if shown.strip():
            lines.append(_fit(f"{name}: {shown}"))
    y = _PAD
    for line in lines[: (_H - _CHART_H - 2 * _PAD) // _LINE]:
        draw.text((_PAD, y), line, fill="black", font=font)
        y += _LINE
    drawn = lines[: (_H - _CHART_H - 2 * _PAD) // _LINE]
    caption = "A card showing " + "; ".join(drawn) if drawn else "A blank card"
    if chart:
        top = max(chart.values()) or 1
        n = len(chart)
        bar_w = (_W - 2 * _PAD) // max(n, 1)
        base = _H - _PAD - _LINE
        for i, (label, count) in enumerate(chart.items()):
            h = round((_CHART_H - _LINE) * count / top)
            x = _PAD + i * bar_w
            draw.rectangle([x + 2, base - h, x + bar_w - 2, base], fill="steelblue")
            draw.text((x + 2, base + 1), _fit(str(label), 6), fill="black", font=font)
        caption += ". A bar chart of " + ", ".join(f"{k}: {v}" for k, v in chart.items())
    with atomic_path(out_path) as tmp:
        img.save(tmp, format="PNG")
    return caption + "."
