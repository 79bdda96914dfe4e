from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tte_recsys.tte.cards import render_card
from tte_recsys.tte.items import ItemInput


def test_card_renders_and_caption_states_what_is_drawn(tmp_path: Path) -> None:
    item = ItemInput("1", {"title": "Toy Story (1995)", "genres": ["Animation", "Comedy"], "tags": []})
    cap = render_card(item, tmp_path / "c.png", chart={"1": 2, "3": 4, "5": 8})
    assert cap == (
        "A card showing title: Toy Story (1995); genres: Animation, Comedy. A bar chart of 1: 2, 3: 4, 5: 8."
    )
    img = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert img.shape == (240, 320, 3)
    blue = (img[:, :, 2] > 150) & (img[:, :, 0] < 100)  # steelblue bars
    heights = [blue[:, x].sum() for x in (10 + 50, 10 + 150, 10 + 250)]
    assert heights[0] < heights[1] < heights[2]  # bars scale with the counts
    assert abs(heights[2] / heights[1] - 2) < 0.1
    assert (img < 100).any()  # text drawn


def test_card_is_deterministic_and_its_image_feeds_the_content_hash(tmp_path: Path) -> None:
    item = ItemInput("1", {"title": "Heat"})
    render_card(item, tmp_path / "a.png")
    render_card(item, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with_img = ItemInput("1", {"title": "Heat"}, str(tmp_path / "a.png"))
    h1 = with_img.content_hash()
    render_card(ItemInput("1", {"title": "Heat 2"}), tmp_path / "a.png")
    assert with_img.content_hash() != h1  # the image bytes changed, so its traces are stale
