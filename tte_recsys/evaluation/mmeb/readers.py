"""Readers: a task's annotation tables and pixels, from a local root in the published layout, into
:class:`TaskData`. One reader per family mode; nothing is downloaded.

Layout: ``<root>/<dataset>[/<config>]/<split>-*.parquet`` for annotations (the hub's parquet
files); ``<root>/<pixel_root>/...`` for images and frame folders; visual-document pages inside
the BEIR ``corpus`` table (extracted once into ``pixels_dir``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from tte_recsys.artifacts import atomic_path
from tte_recsys.evaluation.mmeb.data import (
    CandidatePool,
    Entry,
    MissingTaskData,
    MMEBDataError,
    TaskData,
    safe_name,
)
from tte_recsys.evaluation.mmeb.registry import Family, TaskSpec

__all__ = ["ReadSettings", "read_task", "sample_frames", "table_files"]

log = logging.getLogger(__name__)
_IMAGE_SLOT = "<|image_1|>"
_FRAME_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class ReadSettings:
    """How tasks are read (``read`` in the config).

    Attributes:
        frames: frames sampled per video, evenly (``linspace(0, n - 1, frames)``).
        pad_short: a clip with fewer frames repeats its last one up to ``frames`` (the later
            reference); False gives all of its frames (the earlier reference; our default).
        max_queries: keep the first N queries of each task (None: all), for quick runs.
    """

    frames: int = 8
    pad_short: bool = False
    max_queries: int | None = None

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"read.frames={self.frames}: expected >= 1")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"read.max_queries={self.max_queries}: expected >= 1 or null")


def table_files(root: Path, dataset: str, config: str | None, split: str) -> list[Path]:
    """The parquet files of one table; :class:`MissingTaskData` naming the folder when there are none."""
    d = root / dataset / config if config else root / dataset
    found = sorted(d.glob(f"{split}-*.parquet")) or sorted(d.glob(f"{split}.parquet"))
    if not found:
        raise MissingTaskData(f"{d}/{split}-*.parquet")
    return found


def _read_table(task: TaskSpec, files: Sequence[Path], needed: Sequence[str]) -> pl.DataFrame:
    frames = []
    for f in files:
        try:
            df = pl.read_parquet(f)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise MMEBDataError(f"task {task.label}: {f} is not a readable parquet file ({e})") from e
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise MMEBDataError(
                f"task {task.label}: {f} lacks column(s) {missing}; it has {df.columns} "
                "(rename a family's columns with +columns.<family>.<ours>=<theirs>)"
            )
        frames.append(df.with_columns(pl.lit(f.name).alias("_file"), pl.int_range(pl.len()).alias("_row")))
    return pl.concat(frames, how="diagonal_relaxed")


def _image(task: TaskSpec, path: Path, where: str) -> str:
    """``path`` if it is an image that opens; else an error naming the task and the row."""
    if not path.is_file():
        raise MMEBDataError(f"task {task.label}: {where}: image {path} not found")
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError) as e:
        raise MMEBDataError(f"task {task.label}: {where}: image {path} does not open ({e})") from e
    return str(path)


def sample_frames(folder: Path, n: int, pad_short: bool = False) -> tuple[str, ...]:
    """``n`` frames of a frame folder, evenly spaced (``linspace(0, len - 1, n)``, truncated);
    a shorter clip gives all its frames, or repeats the last one when ``pad_short``."""
    frames = (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES) if folder.is_dir() else []
    )
    if not frames:
        raise FileNotFoundError(f"frame folder {folder} is missing or holds no image")
    if len(frames) < n:
        picked = frames + [frames[-1]] * (n - len(frames)) if pad_short else frames
    else:
        picked = [frames[i] for i in np.linspace(0, len(frames) - 1, n).astype(int)]
    return tuple(str(p) for p in picked)


def _text(inst: str, text: str) -> str:
    return " ".join(x for x in (inst.replace(_IMAGE_SLOT, "").strip(), (text or "").strip()) if x)


def _where(row: dict[str, Any]) -> str:
    return f"{row['_file']} row {row['_row']}"


def _finish(
    task: TaskSpec,
    queries: list[Entry],
    pool: CandidatePool,
    lists: list[np.ndarray] | None,
    rel: list[dict[int, float]],
    notes: list[str],
) -> TaskData:
    if n := pool.conflicting_names():
        msg = f"{n} candidate name(s) appear with two or more contents; each content is embedded"
        log.warning("task %s: %s", task.label, msg)
        notes.append(msg)
    return TaskData(task, queries, pool.entries, lists, rel, notes)


def _read_image(task: TaskSpec, fam: Family, root: Path, s: ReadSettings, _: Path) -> TaskData:
    cols = ["qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"]
    df = _read_table(task, table_files(root, task.dataset, task.config, task.split), cols)
    if s.max_queries:
        df = df.head(s.max_queries)
    pix = root / (task.pixel_root or "")
    if not pix.is_dir():
        raise MissingTaskData(str(pix))
    pool, lists, rel = CandidatePool(), [], []
    queries: list[Entry] = []
    for row in df.iter_rows(named=True):
        where = _where(row)
        texts, paths = list(row["tgt_text"] or []), list(row["tgt_img_path"] or [])
        if not texts and not paths:
            raise MMEBDataError(
                f"task {task.label}: {where}: empty candidate list (tgt_text and tgt_img_path)"
            )
        if texts and paths and len(texts) != len(paths):
            raise MMEBDataError(
                f"task {task.label}: {where}: tgt_text has {len(texts)} entries, tgt_img_path {len(paths)}"
            )
        n = max(len(texts), len(paths))
        texts, paths = texts or [""] * n, paths or [""] * n
        q_imgs = (_image(task, pix / row["qry_img_path"], where),) if row["qry_img_path"] else ()
        queries.append(Entry(f"{task.name}:q{len(queries)}", _text(row["qry_inst"], row["qry_text"]), q_imgs))
        idx = []
        for t, p in zip(texts, paths, strict=True):
            imgs = (_image(task, pix / p, where),) if p else ()
            name = {"text": t, "image": p, "image_caption": f"{p}:{t}"}[fam.names]
            idx.append(pool.add(Entry(name, _text(row["tgt_inst"] or "", t), imgs)))
        lists.append(np.asarray(idx, dtype=np.int64))
        rel.append({idx[0]: 1.0})  # the published lists put the positive first
    return _finish(task, queries, pool, lists, rel, [])


def _read_video(task: TaskSpec, fam: Family, root: Path, s: ReadSettings, _: Path) -> TaskData:
    c = fam.columns
    df = _read_table(task, table_files(root, task.dataset, task.config, task.split), list(c.values()))
    if s.max_queries:
        df = df.head(s.max_queries)
    pix = root / (task.pixel_root or "")
    if not pix.is_dir():
        raise MissingTaskData(str(pix))

    def video(rel_dir: str, where: str) -> tuple[str, ...]:
        try:
            return sample_frames(pix / rel_dir, s.frames, s.pad_short)
        except FileNotFoundError as e:
            raise MMEBDataError(f"task {task.label}: {where}: {e}") from e

    pool, lists, rel, notes = CandidatePool(), [], [], []
    queries: list[Entry] = []
    qi, ti = fam.query_instruction, fam.target_instruction
    mode = fam.mode
    if mode == "video_cls_global":
        label_file = root / task.dataset / "labels.txt"
        if label_file.is_file():
            labels = [x.strip() for x in label_file.read_text(encoding="utf-8").splitlines() if x.strip()]
        else:
            labels = sorted(set(df[c["label"]].cast(pl.String).to_list()))
            notes.append(f"no {label_file}: the label list is the {len(labels)} labels the table uses")
        for lab in labels:
            pool.add(Entry(lab, _text(ti, lab)))
        by_label = {e.name: k for k, e in enumerate(pool.entries)}
    for row in df.iter_rows(named=True):
        where = _where(row)
        if mode in ("video_cls_global", "video_cls_local", "video_qa"):
            vid = str(row[c["video"]])
            text = _text(qi, str(row[c["question"]])) if mode == "video_qa" else qi
            queries.append(Entry(f"{task.name}:{vid}:{len(queries)}", text, video(vid, where)))
        if mode == "video_cls_global":
            lab = str(row[c["label"]])
            if lab not in by_label:
                raise MMEBDataError(
                    f"task {task.label}: {where}: label {lab!r} is not in the task's label list"
                )
            rel.append({by_label[lab]: 1.0})
        elif mode == "video_cls_local":
            opts = [str(row[c["label"]]), *map(str, row[c["negatives"]] or [])]
            idx = [pool.add(Entry(o, _text(ti, o))) for o in opts]
            lists.append(np.asarray(idx, dtype=np.int64))
            rel.append({idx[0]: 1.0})
        elif mode == "video_qa":
            opts = list(fam.options) or [str(o) for o in row[c["options"]] or []]
            ans = row[c["answer"]]
            pos = _answer_index(ans, opts)
            if pos is None:
                raise MMEBDataError(
                    f"task {task.label}: {where}: answer {ans!r} is none of the options {opts}"
                )
            idx = [pool.add(Entry(o, _text(ti, o))) for o in opts]
            lists.append(np.asarray(idx, dtype=np.int64))
            rel.append({idx[pos]: 1.0})
        elif mode == "video_retrieval":
            vid = str(row[c["video"]])
            queries.append(Entry(f"{task.name}:q{len(queries)}", _text(qi, str(row[c["text"]]))))
            rel.append({pool.add(Entry(vid, ti, video(vid, where))): 1.0})
        elif mode in ("video_clips", "video_clip_lists"):
            queries.append(Entry(f"{task.name}:q{len(queries)}", _text(qi, str(row[c["text"]]))))
            if mode == "video_clips":
                vid = str(row[c["video"]])
                vdir = pix / vid
                clips = sorted(p.name for p in vdir.iterdir() if p.is_dir()) if vdir.is_dir() else []
                dirs = [f"{vid}/{x}" for x in clips]
                positive = [x.startswith("positive") for x in clips]
            else:
                pos_l, neg_l = list(row[c["positives"]] or []), list(row[c["negatives"]] or [])
                dirs, positive = [*pos_l, *neg_l], [True] * len(pos_l) + [False] * len(neg_l)
            if not any(positive):
                raise MMEBDataError(f"task {task.label}: {where}: no positive clip among {dirs}")
            idx = [pool.add(Entry(d, ti, video(d, where))) for d in dirs]
            lists.append(np.asarray(idx, dtype=np.int64))
            rel.append({i: 1.0 for i, p in zip(idx, positive, strict=True) if p})
        else:
            raise ValueError(f"family {fam.name}: unknown mode {mode!r}")
    out_lists = None if task.candidates == "global" else lists
    return _finish(task, queries, pool, out_lists, rel, notes)


def _answer_index(ans: Any, opts: list[str]) -> int | None:
    """An answer given as the option's text, its index, or its letter (A, B, ...)."""
    if isinstance(ans, int | np.integer) and 0 <= int(ans) < len(opts):
        return int(ans)
    a = str(ans).strip()
    if a in opts:
        return opts.index(a)
    if len(a) == 1 and a.isalpha() and 0 <= ord(a.upper()) - 65 < len(opts):
        return ord(a.upper()) - 65
    return None


def _page(task: TaskSpec, value: Any, out: Path, where: str) -> str:
    """A corpus page (bytes, or the hub's ``{bytes, path}`` struct) written once to ``out``."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray) or not data:
        raise MMEBDataError(f"task {task.label}: {where}: the image column holds no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError) as e:
        raise MMEBDataError(f"task {task.label}: {where}: the page image does not open ({e})") from e
    if not out.is_file():
        with atomic_path(out) as tmp:
            tmp.write_bytes(bytes(data))
    return str(out)


def _read_visdoc(task: TaskSpec, fam: Family, root: Path, s: ReadSettings, pixels: Path) -> TaskData:
    q = _read_table(task, table_files(root, task.dataset, "queries", task.split), ["query-id", "query"])
    corpus = _read_table(task, table_files(root, task.dataset, "corpus", task.split), ["corpus-id", "image"])
    qrels = _read_table(
        task, table_files(root, task.dataset, "qrels", task.split), ["query-id", "corpus-id", "score"]
    )
    pool, notes = CandidatePool(), []
    doc_index: dict[str, int] = {}
    for row in corpus.iter_rows(named=True):
        cid = str(row["corpus-id"])
        if cid in doc_index:
            raise MMEBDataError(f"task {task.label}: corpus {_where(row)}: corpus-id {cid!r} appears twice")
        path = _page(
            task,
            row["image"],
            pixels / safe_name(task.label) / f"{safe_name(cid)}.img",
            f"corpus {_where(row)}",
        )
        doc_index[cid] = pool.add(Entry(cid, fam.target_instruction, (path,)))
    qtext = {str(r["query-id"]): str(r["query"]) for r in q.iter_rows(named=True)}
    grades: dict[str, dict[int, float]] = {}
    for row in qrels.iter_rows(named=True):
        qid, cid, score = str(row["query-id"]), str(row["corpus-id"]), row["score"]
        where = f"qrels {_where(row)}"
        if cid not in doc_index:
            raise MMEBDataError(f"task {task.label}: {where}: corpus-id {cid!r} is not in the corpus")
        if qid not in qtext:
            raise MMEBDataError(f"task {task.label}: {where}: query-id {qid!r} is not in the queries")
        if score is None or float(score) <= 0:
            continue
        g = grades.setdefault(qid, {})
        g[doc_index[cid]] = max(g.get(doc_index[cid], 0.0), float(score))
    kept = [qid for qid in qtext if qid in grades]
    if dropped := len(qtext) - len(kept):
        notes.append(f"{dropped} quer(y/ies) without a positive qrel are not scored")
    if s.max_queries:
        kept = kept[: s.max_queries]
    queries = [Entry(f"{task.name}:{qid}", _text(fam.query_instruction, qtext[qid])) for qid in kept]
    return _finish(task, queries, pool, None, [grades[qid] for qid in kept], notes)


_READERS: dict[str, Callable[[TaskSpec, Family, Path, ReadSettings, Path], TaskData]] = {
    "image": _read_image,
    "video": _read_video,
    "visdoc": _read_visdoc,
}


def read_task(task: TaskSpec, fam: Family, root: Path, s: ReadSettings, pixels: Path) -> TaskData:
    """One task's :class:`TaskData`. :class:`MissingTaskData` when its files are not under
    ``root`` (skipped); :class:`MMEBDataError` naming task, file and row when they are malformed."""
    if task.reader not in _READERS:
        raise ValueError(f"task {task.label}: reader {task.reader!r}; expected one of {sorted(_READERS)}")
    data = _READERS[task.reader](task, fam, root, s, pixels)
    if not data.queries:
        raise MMEBDataError(f"task {task.label}: no query to score under {root}")
    return data
