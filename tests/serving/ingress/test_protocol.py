import pytest

from glmserve.common.errors import InvalidRequestError
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest, parse_body


def _chat(extra: str = "") -> bytes:
    return ('{"model": "m", "messages": [{"role": "user", "content": "hi"}]' + extra + "}").encode()


def test_thinking_maps_onto_the_chat_template_switch() -> None:
    assert parse_body(_chat(', "thinking": {"type": "disabled"}'), ChatRequest).chat_template_kwargs == {
        "enable_thinking": False
    }
    on = parse_body(_chat(', "thinking": {"type": "enabled"}, "chat_template_kwargs": {"x": 1}'), ChatRequest)
    assert on.chat_template_kwargs == {"x": 1, "enable_thinking": True}
    assert parse_body(_chat(), ChatRequest).chat_template_kwargs is None  # the model's default applies


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{", None, "not valid JSON"),
        (b'{"model": "\xff"}', None, "not valid UTF-8"),
        (b"[]", None, "must be a JSON object"),
        (b'{"model": "m", "messages": []}', "messages", "at least one message"),
        (_chat(', "max_tokens": 0'), "max_tokens", "at least 1"),
        (_chat(', "max_completion_tokens": -2'), "max_completion_tokens", "at least 1"),
        (_chat(', "n": 3'), "n", "n=1"),
        (_chat(', "thinking": {"type": "on"}'), "thinking.type", "'enabled' or 'disabled'"),
        (_chat(', "thinking": {"type": "enabled", "budget": 3}'), "thinking.budget", "Extra inputs"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "messages", "role is 'robot'"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature", ""),
    ],
)
def test_bad_bodies_name_what_to_fix(body: bytes, param: str | None, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_body(body, ChatRequest)
    assert exc.value.param == param
    assert fragment in exc.value.message
    assert exc.value.kind.http_status == 400


def test_completion_limits() -> None:
    with pytest.raises(InvalidRequestError):
        parse_body(b'{"model": "m", "prompt": "x", "max_tokens": -1}', TextCompletionRequest)
    assert parse_body(b'{"model": "m", "prompt": "x", "max_tokens": 5}', TextCompletionRequest).max_tokens == 5
