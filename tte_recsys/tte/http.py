"""JSON over HTTP to OpenAI-compatible servers (vLLM and others), for every backend that talks to
one: a timeout per request, retries with exponential backoff on 429 / 5xx / connection errors
(``Retry-After`` honoured), images as data URLs. Standard library only."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ClientSettings", "JsonClient", "RequestFailed", "image_part"]

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RequestFailed(RuntimeError):
    """A request failed for good (after retries, or a non-retryable status)."""


@dataclass(frozen=True)
class ClientSettings:
    """How a backend talks to its server (``<section>.client``).

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
                f"client: concurrency={self.concurrency} must be >= 1, max_retries={self.max_retries} >= 0"
            )


def image_part(path: str) -> dict[str, Any]:
    """An image as an OpenAI ``image_url`` content part with a data URL."""
    mime = mimetypes.guess_type(path)[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


class JsonClient:
    """POSTs JSON to one URL with :class:`ClientSettings`' timeout and retries; ``on_attempt`` is
    called before every attempt (backends count their model calls with it)."""

    def __init__(self, url: str, s: ClientSettings, on_attempt: Any = None) -> None:
        self.url, self.s, self.on_attempt = url, s, on_attempt
        self.api_key = os.environ.get(s.api_key_env)

    def _post(self, body: bytes) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.s.timeout_s) as resp:
            return json.loads(resp.read())

    def post(self, payload: dict[str, Any]) -> Any:
        """The decoded JSON response; :class:`RequestFailed` once retries are spent or the status
        is not retryable, or when the response is not JSON."""
        body = json.dumps(payload).encode()
        delay, last = self.s.backoff_s, ""
        for attempt in range(self.s.max_retries + 1):
            if self.on_attempt is not None:
                self.on_attempt()
            try:
                return self._post(body)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {self.url}"
                if e.code not in _RETRY_STATUS:
                    raise RequestFailed(f"{last} (not retried): {e.read()[:200]!r}") from e
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{self.url}: {type(e).__name__}: {getattr(e, 'reason', e)} (is the server up at base_url?)"
            except json.JSONDecodeError as e:
                raise RequestFailed(f"malformed response from {self.url}: {e}") from e
            if attempt < self.s.max_retries:
                time.sleep(min(delay, 30.0))
                delay *= 2
        raise RequestFailed(f"{last}; gave up after {self.s.max_retries + 1} attempts")
