"""Reasoner backend for an OpenAI-compatible chat-completions endpoint (a vLLM server, for one).

Bounded concurrency (a thread pool), a timeout per request, retries with exponential backoff on
429 / 5xx / connection errors (``Retry-After`` honoured), images sent inline as data URLs. A
request that still fails becomes that item's failure; the batch goes on. Standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tte_recsys.config import settings
from tte_recsys.tte.http import ClientSettings, JsonClient, RequestFailed, image_part
from tte_recsys.tte.reasoner.backends import TraceRequest

__all__ = ["ClientSettings", "CompletionSettings", "OpenAIReasoner", "RequestFailed"]


@dataclass(frozen=True)
class CompletionSettings:
    """What every request asks for (``reasoner.completion``); all of it is in the reasoner id."""

    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = 0


class OpenAIReasoner:
    """Chat completions over HTTP.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the served model name.
        client: connection, concurrency and retries (:class:`ClientSettings`, or its mapping).
        completion: max_tokens, temperature, seed sent with every request (:class:`CompletionSettings`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        client: ClientSettings | Mapping[str, Any] | None = None,
        completion: CompletionSettings | Mapping[str, Any] | None = None,
    ) -> None:
        c = settings(ClientSettings, client, "reasoner.client")
        done = settings(CompletionSettings, completion, "reasoner.completion")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency = model, c.concurrency
        self.max_tokens, self.temperature, self.seed = done.max_tokens, done.temperature, done.seed
        self.reasoner_id = f"openai:{model}:{done.max_tokens}:t{done.temperature}:s{done.seed}"
        self.calls = 0
        self._lock = threading.Lock()
        self._client = JsonClient(self.url, c, on_attempt=self._count)

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def _body(self, r: TraceRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [dict(m) for m in r.messages]
        if r.image_path is not None:
            last = messages[-1]
            last["content"] = [{"type": "text", "text": last["content"]}, image_part(r.image_path)]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def _one(self, r: TraceRequest) -> str | Exception:
        try:
            body = self._body(r)
        except OSError as e:
            return RequestFailed(f"cannot read image {r.image_path}: {e}")
        try:
            payload = self._client.post(body)
            return str(payload["choices"][0]["message"]["content"] or "")
        except RequestFailed as e:
            return e
        except (KeyError, IndexError, TypeError) as e:
            return RequestFailed(f"malformed response from {self.url}: {e}")

    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))
