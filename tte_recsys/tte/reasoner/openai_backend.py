"""Reasoner backend for an OpenAI-compatible chat-completions endpoint (a vLLM server, for one).

Bounded concurrency (a thread pool), a timeout per request, retries with exponential backoff on
429 / 5xx / connection errors (``Retry-After`` honoured), images sent inline as data URLs. A
request that still fails becomes that item's failure; the batch goes on. Standard library only.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tte_recsys.tte.reasoner.backends import TraceRequest, settings

__all__ = ["ClientSettings", "CompletionSettings", "OpenAIReasoner", "RequestFailed"]


@dataclass(frozen=True)
class ClientSettings:
    """How :class:`OpenAIReasoner` talks to the server (``reasoner.client``).

    Attributes:
        api_key_env: environment variable holding the key (unset: no Authorization header).
        concurrency: requests in flight at once.
        timeout_s: per request.
        max_retries: retries after the first attempt, for retryable failures.
        backoff_s: first retry delay; doubles each retry (capped at 30 s).
    """

    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0:
            raise ValueError(
                f"reasoner.client: concurrency={self.concurrency} must be >= 1, max_retries={self.max_retries} >= 0"
            )


@dataclass(frozen=True)
class CompletionSettings:
    """What every request asks for (``reasoner.completion``); all of it is in the reasoner id."""

    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = 0


_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RequestFailed(RuntimeError):
    """A chat-completions request failed for good (after retries, or a non-retryable status)."""


def _image_part(path: str) -> dict[str, Any]:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


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
        api_key_env, concurrency, timeout_s = c.api_key_env, c.concurrency, c.timeout_s
        max_retries, backoff_s = c.max_retries, c.backoff_s
        max_tokens, temperature, seed = done.max_tokens, done.temperature, done.seed
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, os.environ.get(api_key_env)
        self.concurrency, self.timeout_s, self.max_retries, self.backoff_s = (
            concurrency,
            timeout_s,
            max_retries,
            backoff_s,
        )
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.reasoner_id = f"openai:{model}:{max_tokens}:t{temperature}:s{seed}"
        self.calls = 0
        self._lock = threading.Lock()

    def _body(self, r: TraceRequest) -> bytes:
        messages: list[dict[str, Any]] = [dict(m) for m in r.messages]
        if r.image_path is not None:
            last = messages[-1]
            last["content"] = [{"type": "text", "text": last["content"]}, _image_part(r.image_path)]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return json.dumps(body).encode()

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            payload = json.loads(resp.read())
        return str(payload["choices"][0]["message"]["content"] or "")

    def _one(self, r: TraceRequest) -> str | Exception:
        try:
            body = self._body(r)
        except OSError as e:
            return RequestFailed(f"cannot read image {r.image_path}: {e}")
        delay = self.backoff_s
        last = ""
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.calls += 1
            try:
                return self._post(body)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {self.url}"
                if e.code not in _RETRY_STATUS:
                    return RequestFailed(f"{last} (not retried): {e.read()[:200]!r}")
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, json.JSONDecodeError) as e:
                return RequestFailed(f"malformed response from {self.url}: {e}")
            if attempt < self.max_retries:
                time.sleep(min(delay, 30.0))
                delay *= 2
        return RequestFailed(f"{last}; gave up after {self.max_retries + 1} attempts")

    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))
