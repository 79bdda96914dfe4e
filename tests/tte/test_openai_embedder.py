"""The OpenAI-compatible embeddings backend against a real HTTP server on 127.0.0.1, backed by the
tiny vision-language embedder: the same vectors as the local model, images as data URLs, bounded
concurrency, retries; and every pipeline through it as through the local model: eval_mmeb's
scores, embed_items' vectors, train_i2i's frozen content (one factory: tte.factory)."""

from __future__ import annotations

import base64
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig

from pipelines import embed_items, eval_mmeb
from tests.helpers import ScriptedJSONServer, embed_overrides
from tte_recsys.artifacts import read_manifest
from tte_recsys.evaluation.mmeb.synthetic import make_synthetic_root
from tte_recsys.experiment.i2i import prepare
from tte_recsys.models.content import FrozenContent
from tte_recsys.tte.embedder import Embedder
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.http import ClientSettings, RequestFailed
from tte_recsys.tte.openai_embedder import OpenAIEmbedder
from tte_recsys.tte.tiny import build_tiny_qwen2_vl
from tte_recsys.vectors import load_vectors


class EmbeddingServer(ScriptedJSONServer):
    """``POST /v1/embeddings``: ``input`` (texts) or chat ``messages`` (images as data URLs + text),
    answered by a local :class:`Embedder` (one request at a time through the model)."""

    def __init__(self, emb: Embedder) -> None:
        super().__init__()
        self.emb, self.model_lock = emb, threading.Lock()

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        vecs = self.embed(body)
        return {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]}

    def embed(self, body: dict[str, Any]) -> np.ndarray:
        with self.model_lock:
            if "input" in body:
                return self.emb.encode(list(body["input"]))
            (msg,) = body["messages"]
            text = next(p["text"] for p in msg["content"] if p["type"] == "text")
            with tempfile.TemporaryDirectory() as d:
                paths = []
                for k, p in enumerate(x for x in msg["content"] if x["type"] == "image_url"):
                    path = Path(d) / f"{k}.png"
                    path.write_bytes(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))
                    paths.append(str(path))
                return self.emb.encode([text], images=[paths])


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vl"))


@pytest.fixture
def server(vl_dir: Path) -> Iterator[EmbeddingServer]:
    s = EmbeddingServer(build_embedder(str(vl_dir), pooling="last", runtime="torch"))
    s.start()
    yield s
    s.stop()


def _fast(**kw: Any) -> ClientSettings:
    return ClientSettings(**{"backoff_s": 0.01, "timeout_s": 20.0, **kw})


def test_vectors_match_the_local_model_with_images_and_bounded_concurrency(
    server: EmbeddingServer, tmp_path: Path
) -> None:
    root = make_synthetic_root(tmp_path / "root", queries=4)
    frames = sorted(str(p) for p in (root / "video-tasks/frames/video_cls/UCF101/v1").glob("*.png"))[:3]
    texts = ["a cat", "a boat on water", "frames of a video", "one more"]
    images: list[Any] = [None, None, frames, str(root / "image-tasks/MSCOCO_t2i/c0.png")]
    remote = OpenAIEmbedder(server.url, "tiny", batch_size=2, client=_fast(concurrency=2)).encode(
        texts, images=images
    )
    local = server.emb.encode(texts, images=images)
    np.testing.assert_allclose(remote, local, atol=1e-6)
    assert np.allclose(np.linalg.norm(remote, axis=1), 1.0)
    kinds = sorted("input" if "input" in b else "messages" for b in server.bodies)
    assert kinds == ["input", "messages", "messages"]  # two texts per request, one request per image input
    image_req = next(b for b in server.bodies if "messages" in b and len(b["messages"][0]["content"]) == 4)
    assert image_req["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert server.max_in_flight <= 2


def test_retries_then_gives_up_with_a_clear_error(server: EmbeddingServer) -> None:
    server.script = [(503, {"Retry-After": "0"}), (429, {})]
    vec = OpenAIEmbedder(server.url, "tiny", client=_fast()).encode(["hello"])
    assert vec.shape[0] == 1 and len(server.bodies) == 3
    server.script = [(400, {})]
    with pytest.raises(
        RequestFailed, match=r"HTTP 400 from http://127.0.0.1:\d+/v1/embeddings \(not retried\)"
    ):
        OpenAIEmbedder(server.url, "tiny", client=_fast()).encode(["hello"])
    server.script = [(503, {})] * 3
    with pytest.raises(RequestFailed, match=r"HTTP 503 .*gave up after 3 attempts"):
        OpenAIEmbedder(server.url, "tiny", client=_fast(max_retries=2)).encode(["hello"])


def test_eval_mmeb_through_the_server_scores_as_the_local_model(
    server: EmbeddingServer, vl_dir: Path, tmp_path: Path, compose_cfg: Callable[..., DictConfig]
) -> None:
    root = make_synthetic_root(tmp_path / "root", queries=4)
    tasks = "tasks=[ImageNet-1K,MSCOCO_t2i,UCF101,ViDoSeek-doc]"
    common = [f"root={root}", tasks, f"cache_dir={tmp_path / 'cache'}"]
    local = [f"embedder.model_path={vl_dir}", "embedder.pooling=last", "embedder.runtime=torch"]
    eval_mmeb.run(compose_cfg("eval_mmeb", [*common, *local, f"output_dir={tmp_path / 'local'}"]))
    remote = [
        "embedder=openai",
        f"embedder.base_url={server.url}",
        "embedder.model=tiny",
        "embedder.revision=seed0",
    ]
    eval_mmeb.run(compose_cfg("eval_mmeb", [*common, *remote, f"output_dir={tmp_path / 'remote'}"]))
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("local", "remote"))
    assert {k: v["score"] for k, v in a["tasks"].items()} == pytest.approx(
        {k: v["score"] for k, v in b["tasks"].items()}
    )
    assert b["embedder"].startswith("openai:http://127.0.0.1") and a["fingerprint"] != b["fingerprint"]


def _served(server: EmbeddingServer) -> list[str]:
    return ["embedder=openai", f"embedder.base_url={server.url}", "embedder.model=tiny"]


def test_embed_items_and_train_i2i_content_through_the_server_give_the_local_vectors(
    server: EmbeddingServer, vl_dir: Path, tmp_path: Path, compose_cfg: Callable[..., DictConfig]
) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    args = embed_overrides(vl_dir, local, "embedder.runtime=torch")
    embed_items.run(compose_cfg("embed_items", args))
    served = [a for a in embed_overrides(vl_dir, remote) if not a.startswith("embedder.")] + _served(server)
    embed_items.run(compose_cfg("embed_items", served))
    a, b = load_vectors(local), load_vectors(remote)
    assert a.ids == b.ids and len(a.ids) == 150
    np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-6)
    assert b.model_id == f"openai:{server.url}:tiny:" and a.model_id != b.model_id
    requests = len(server.bodies)
    embed_items.run(compose_cfg("embed_items", served))  # resumed: every shard is there
    assert len(server.bodies) == requests
    assert read_manifest(remote, kind="embed_items")["dim"] == a.vectors.shape[1]

    # train_i2i's content stage: the frozen tower holds the served vectors
    cfg = compose_cfg(
        "train_i2i", ["debug=tiny", "data=amazon_office", "data.max_items=150", *_served(server)]
    )
    run = prepare(cfg, tmp_path / "run")
    assert isinstance(run.content, FrozenContent) and run.content_folder == str(tmp_path / "run" / "content")
    np.testing.assert_allclose(
        run.content.table.numpy(), a.aligned(run.ds.items["item_id"].to_list()), atol=1e-6
    )


def test_a_served_embedder_cannot_be_trained_inside_the_model(
    server: EmbeddingServer, compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_cfg("train_i2i", ["debug=tiny", "model.content=trainable", *_served(server)])
    with pytest.raises(
        ValueError, match=r"model\.content=trainable .* is served over HTTP: use a local embedder"
    ):
        prepare(cfg, tmp_path / "run")
    assert not server.bodies  # refused before any work
