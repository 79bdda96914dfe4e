"""An embedder behind an OpenAI-compatible ``/v1/embeddings`` endpoint (a vLLM server running an
embedding model, for one): the same ``encode`` door as :class:`~tte_recsys.tte.embedder.Embedder`.

Text-only inputs go ``batch_size`` at a time as ``input``; an input with images goes alone, as
chat ``messages`` with the images as data URLs (vLLM's multimodal embedding request). Bounded
concurrency, retries and timeouts come from :class:`~tte_recsys.tte.http.JsonClient`. Vectors
are L2-normalised here, whatever the server does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tte_recsys.config import settings
from tte_recsys.tte.http import ClientSettings, JsonClient, RequestFailed, image_part

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder:
    """Embeddings over HTTP.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/embeddings`` is appended).
        model: the served model name.
        revision: what the server's weights are (a tag you choose): the server cannot say, so
            this is what tells two models apart in the embedding cache's key.
        batch_size: text-only inputs per request.
        client: connection, concurrency and retries (:class:`ClientSettings`, or its mapping).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        revision: str = "",
        batch_size: int = 32,
        client: ClientSettings | Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"embedder.batch_size={batch_size}: expected >= 1")
        c = settings(ClientSettings, client, "embedder.client")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model, self.batch_size, self.concurrency = model, batch_size, c.concurrency
        self.model_id = f"openai:{base_url.rstrip('/')}:{model}:{revision}"
        self._client = JsonClient(self.url, c)
        self.dim = 0

    def _vectors(self, payload: dict[str, Any], n: int) -> np.ndarray:
        out = self._client.post({"model": self.model, "encoding_format": "float", **payload})
        try:
            data = sorted(out["data"], key=lambda d: int(d["index"]))
            vecs = np.asarray([d["embedding"] for d in data], dtype=np.float32)  # (n, D)
        except (KeyError, TypeError, ValueError) as e:
            raise RequestFailed(f"malformed response from {self.url}: {e}") from e
        if vecs.ndim != 2 or len(vecs) != n:
            raise RequestFailed(f"{self.url} returned {len(vecs)} embedding(s) for {n} input(s)")
        if not np.isfinite(vecs).all():
            raise RequestFailed(f"{self.url} returned a NaN or infinite embedding")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def _one_with_images(self, text: str, images: Sequence[str]) -> np.ndarray:
        content = [*(image_part(p) for p in images), {"type": "text", "text": text}]
        return self._vectors({"messages": [{"role": "user", "content": content}]}, 1)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        show_progress: bool = False,
        images: Sequence[str | Sequence[str] | None] | None = None,
    ) -> np.ndarray:
        """(N, D) float32 unit rows, in input order; :class:`RequestFailed` if a request fails for good."""
        texts = list(texts)
        imgs = [([p] if isinstance(p, str) else list(p or [])) for p in (images or [None] * len(texts))]
        bs = batch_size or self.batch_size
        plain = [i for i, im in enumerate(imgs) if not im]
        jobs: list[tuple[list[int], Any]] = []
        jobs += [
            (plain[s : s + bs], lambda rows: self._vectors({"input": [texts[r] for r in rows]}, len(rows)))
            for s in range(0, len(plain), bs)
        ]
        jobs += [
            ([i], lambda rows: self._one_with_images(texts[rows[0]], imgs[rows[0]]))
            for i, im in enumerate(imgs)
            if im
        ]
        out: np.ndarray | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(lambda job: job[1](job[0]), jobs))
        for (rows, _), vecs in zip(jobs, results, strict=True):
            if out is None:
                out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
            out[rows] = vecs
        if out is None:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.dim = out.shape[1]
        return out
