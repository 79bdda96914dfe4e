"""The openai backend against a real HTTP server on 127.0.0.1, backed by the tiny Qwen2."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ScriptedJSONServer
from tte_recsys.tte.reasoner.backends import GenerationSettings, HFReasoner, TraceRequest
from tte_recsys.tte.reasoner.openai_backend import ClientSettings, OpenAIReasoner, RequestFailed
from tte_recsys.tte.reasoner.prompts import get_template

T = get_template("item_card")


class FakeVLLM(ScriptedJSONServer):
    """An OpenAI-compatible chat-completions server answered by the tiny Qwen2."""

    def __init__(self, model: HFReasoner) -> None:
        super().__init__()
        self.model = model

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        msgs = [
            {
                "role": m["role"],
                "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"],
            }
            for m in body["messages"]
        ]
        text = self.model.generate([TraceRequest("x", msgs)])[0]
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}


@pytest.fixture
def server(tiny_qwen_dir: Path) -> Iterator[FakeVLLM]:
    s = FakeVLLM(HFReasoner(str(tiny_qwen_dir), GenerationSettings(max_new_tokens=6, do_sample=True, seed=1)))
    s.start()
    yield s
    s.stop()


def _client(s: FakeVLLM, **kw: Any) -> OpenAIReasoner:
    return OpenAIReasoner(s.url, "tiny", ClientSettings(backoff_s=0.01, **kw))


def _reqs(n: int) -> list[TraceRequest]:
    return [TraceRequest(f"i{k}", T.messages(f"item {k}")) for k in range(n)]


def test_generates_through_real_http(server: FakeVLLM) -> None:
    out = _client(server).generate(_reqs(3))
    assert all(isinstance(o, str) and o.strip() for o in out)
    assert server.bodies[0]["model"] == "tiny" and server.bodies[0]["messages"][0]["role"] == "system"


def test_server_that_fails_then_recovers(server: FakeVLLM) -> None:
    server.script = [(503, {}), (502, {}), (429, {"Retry-After": "0.05"})]
    c = _client(server)
    t0 = time.perf_counter()
    out = c.generate(_reqs(1))
    assert isinstance(out[0], str) and c.calls == 4
    assert time.perf_counter() - t0 >= 0.05  # Retry-After was honoured


def test_non_retryable_and_exhausted_failures_are_per_item(server: FakeVLLM) -> None:
    server.script = [(400, {})]
    out = _client(server, concurrency=1).generate(_reqs(2))
    assert isinstance(out[0], RequestFailed) and "HTTP 400" in str(out[0]) and "not retried" in str(out[0])
    assert isinstance(out[1], str)
    server.script = [(503, {})] * 3
    out = _client(server, max_retries=2).generate(_reqs(1))
    assert isinstance(out[0], RequestFailed) and "gave up after 3 attempts" in str(out[0])


def test_timeout_is_retried_then_reported(server: FakeVLLM) -> None:
    server.delay_s = 0.5
    out = _client(server, timeout_s=0.1, max_retries=1).generate(_reqs(1))
    assert isinstance(out[0], RequestFailed) and "gave up after 2 attempts" in str(out[0])


def test_concurrency_is_bounded(server: FakeVLLM) -> None:
    server.delay_s = 0.1
    _client(server, concurrency=2).generate(_reqs(8))
    assert server.max_in_flight == 2


def test_image_is_sent_as_data_url(server: FakeVLLM, tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "card.png"
    Image.new("RGB", (8, 8), "red").save(img)
    out = _client(server).generate([TraceRequest("a", T.messages("item"), str(img))])
    assert isinstance(out[0], str)
    parts = server.bodies[-1]["messages"][-1]["content"]
    assert parts[0]["type"] == "text" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    missing = _client(server).generate([TraceRequest("b", T.messages("item"), str(tmp_path / "nope.png"))])
    assert isinstance(missing[0], RequestFailed) and "cannot read image" in str(missing[0])
