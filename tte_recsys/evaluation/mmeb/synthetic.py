"""A small synthetic MMEB-V2 root in the published layout, for ``debug=tiny``, the tests and the
benchmark: a few tasks of each reader family, rendered images (composite cards), frame folders
(one clip shorter than 8 frames), BEIR tables with graded qrels, and repeated candidates.

Tasks written: ImageNet-1K (text candidates, one name with two contents), MSCOCO_t2i (image
candidates), CIRR (``path:caption`` names), UCF101 (global labels), MSR-VTT (global videos),
ActivityNetQA (yes / no), Charades-STA (clip folders), ViDoRe_docvqa (binary qrels),
ViDoSeek-doc (grades 3 and 2, and a 0 row that is dropped).
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from tte_recsys.artifacts import write_parquet
from tte_recsys.tte.cards import render_card
from tte_recsys.tte.items import ItemInput

__all__ = ["SYNTHETIC_TASKS", "make_synthetic_root"]

SYNTHETIC_TASKS = (
    "ImageNet-1K",
    "MSCOCO_t2i",
    "CIRR",
    "UCF101",
    "MSR-VTT",
    "ActivityNetQA",
    "Charades-STA",
    "ViDoRe_docvqa",
    "ViDoSeek-doc",
)
_WORDS = ["cat", "dog", "boat", "tree", "car", "bird", "house", "chair", "lamp", "kite", "bike", "cup"]


def _card(path: Path, **fields: object) -> str:
    render_card(ItemInput(path.stem, dict(fields)), path)
    return str(path)


def _frames(folder: Path, word: str, n: int) -> None:
    for f in range(n):
        _card(folder / f"frame_{f:03d}.png", scene=word, frame=f)


def _table(
    root: Path, rel: str, rows: Mapping[str, Sequence[Any]], name: str = "test-00000-of-00001"
) -> None:
    write_parquet(root / rel / f"{name}.parquet", pl.DataFrame(rows, strict=False))


def make_synthetic_root(root: str | Path, queries: int = 6, seed: int = 0) -> Path:
    """Write the synthetic root (``queries`` per task) under ``root``; returns it."""
    r = Path(root)
    rng = random.Random(seed)
    img = r / "image-tasks"
    words = _WORDS[: max(4, min(len(_WORDS), queries + 2))]
    # Image classification: 4 text candidates per query from a shared label set (names repeat).
    rows: dict[str, list[object]] = {
        k: [] for k in ("qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path")
    }
    for q in range(queries):
        w = words[q % len(words)]
        rows["qry_inst"].append("<|image_1|> Represent the given image for classification")
        rows["qry_text"].append("")
        rows["qry_img_path"].append(
            Path(_card(img / "ImageNet-1K" / f"q{q}.png", object=w, seed=rng.random()))
            .relative_to(img)
            .as_posix()
        )
        negs = rng.sample([x for x in words if x != w], 3)
        # one query names its positive with another instruction: the same name, two contents
        rows["tgt_inst"].append("Represent the class label:" if q else "Label:")
        rows["tgt_text"].append([w, *negs])
        rows["tgt_img_path"].append(["", "", "", ""])
    _table(r, "ziyjiang/MMEB_Test_Instruct/ImageNet-1K", rows)
    # Text to image and image(+text) to image: image candidates.
    for task, i2i in (("MSCOCO_t2i", False), ("CIRR", True)):
        rows = {k: [] for k in rows}
        pics = [
            Path(_card(img / task / f"c{k}.png", scene=w)).relative_to(img).as_posix()
            for k, w in enumerate(words)
        ]
        for q in range(queries):
            k = q % len(words)
            others = rng.sample([j for j in range(len(words)) if j != k], 3)
            if i2i:
                rows["qry_inst"].append("<|image_1|> Find the image that matches the modification")
                rows["qry_text"].append(f"make it a {words[k]}")
                rows["qry_img_path"].append(pics[others[0]])
            else:
                rows["qry_inst"].append("Find me an everyday image that matches the given caption:")
                rows["qry_text"].append(f"a picture of a {words[k]}")
                rows["qry_img_path"].append("")
            rows["tgt_inst"].append("<|image_1|> Represent the given image.")
            rows["tgt_text"].append([""] * 4 if not i2i else [words[j] for j in (k, *others)])
            rows["tgt_img_path"].append([pics[j] for j in (k, *others)])
        _table(r, f"ziyjiang/MMEB_Test_Instruct/{task}", rows)
    # Video: classification over the task's label list, retrieval, yes/no QA, clip retrieval.
    frames = r / "video-tasks" / "frames"
    vids = [f"v{k}" for k in range(queries)]
    for k, v in enumerate(vids):
        n = 5 if k == 0 else 10  # v0 is shorter than the 8 frames sampled
        for kind, task in (("video_cls", "UCF101"), ("video_ret", "MSR-VTT"), ("video_qa", "ActivityNetQA")):
            _frames(frames / kind / task / v, words[k % len(words)], n)
    (r / "VLM2Vec/UCF101").mkdir(parents=True, exist_ok=True)
    (r / "VLM2Vec/UCF101/labels.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    _table(
        r, "VLM2Vec/UCF101", {"video_id": vids, "pos_text": [words[k % len(words)] for k in range(queries)]}
    )
    _table(
        r,
        "VLM2Vec/MSR-VTT/test_1k",
        {"video_id": vids, "caption": [f"a video of a {words[k % len(words)]}" for k in range(queries)]},
    )
    _table(
        r,
        "VLM2Vec/ActivityNetQA",
        {
            "video_id": vids,
            "question": [f"is there a {words[k % len(words)]}?" for k in range(queries)],
            "answer": ["yes" if k % 2 else "no" for k in range(queries)],
        },
    )
    for q in range(queries):
        base = frames / "video_mret" / "Charades-STA" / f"m{q}"
        for c in range(4):
            _frames(base / ("positive" if c == q % 4 else f"neg_{c}"), words[(q + c) % len(words)], 3)
    _table(
        r,
        "VLM2Vec/Charades-STA",
        {
            "video_id": [f"m{q}" for q in range(queries)],
            "query": [f"someone with a {words[q % len(words)]}" for q in range(queries)],
        },
    )
    # Visual documents: BEIR tables, pages inline as the hub's {bytes, path} struct.
    for task, ds, graded in (
        ("ViDoRe_docvqa", "vidore/docvqa_test_subsampled_beir", False),
        ("ViDoSeek-doc", "VLM2Vec/ViDoSeek", True),
    ):
        pages = []
        for k, w in enumerate(words):
            buf = io.BytesIO()
            p = Path(_card(r / "_pages" / task / f"p{k}.png", page=k, topic=w))
            Image.open(p).save(buf, format="PNG")
            pages.append({"bytes": buf.getvalue(), "path": f"p{k}.png"})
        _table(r, f"{ds}/corpus", {"corpus-id": [f"doc{k}" for k in range(len(words))], "image": pages})
        _table(
            r,
            f"{ds}/queries",
            {
                "query-id": [f"q{q}" for q in range(queries)],
                "query": [f"which page is about {words[q % len(words)]}?" for q in range(queries)],
            },
        )
        qid, cid, score = [], [], []
        for q in range(queries):
            k = q % len(words)
            qid.append(f"q{q}")
            cid.append(f"doc{k}")
            score.append(3 if graded else 1)
            if graded:  # the other pages of its "document", and a zero grade that is dropped
                qid += [f"q{q}", f"q{q}"]
                cid += [f"doc{(k + 1) % len(words)}", f"doc{(k + 2) % len(words)}"]
                score += [2, 0]
        _table(r, f"{ds}/qrels", {"query-id": qid, "corpus-id": cid, "score": score})
    return r
