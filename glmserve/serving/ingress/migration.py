"""Request migration: a request whose engine dies or stalls continues on another replica.

As NVIDIA Dynamo's `--migration-limit`: when the decode (or colocated) engine serving a request
fails mid-way (its process killed, its replica gone, or no output for `stall_timeout_s`), the
ingress sends the request again, to another replica, continued from where it stopped. The engines
return the token ids they generate (vLLM's `return_token_ids`); the prompt's token ids plus those
become the new prompt (ids, never re-tokenised text), the budget left the new `max_tokens`. The
client sees one stream, with one id and one usage total; admission and billing stay with the one
RequestLife, which ends once.

What cannot continue exactly ends the stream with an error event instead:
- a tool call: once `<tool_call>` was generated, a new engine's parser would number the calls
  afresh and its grammar would restart mid-call;
- output under a grammar (`response_format`, a required or named `tool_choice`): the grammar
  would restart mid-output;
- a stream whose token ids the engine hides (`include_reasoning: false`);
- a request with no other replica to go to (Serve's running set, running.py, less the replicas
  that failed it): waiting for one would hang the client until a new engine has loaded.
Reasoning continues: an engine resumes its GLM parser in content once the prompt's turn holds
`</think>` (vllm_plugin/glm_resume.py), in reasoning otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from glmserve.common.errors import BackendError, GlmserveError
from glmserve.serving.ingress.engine_request import EngineRequest
from glmserve.serving.ingress.settings import MigrationSettings

# Token ids of one choice's delta (`return_token_ids`), and the prompt's on the first chunk. As
# with the usage key (responses.py), in vLLM's compact JSON these can only appear as keys.
_TOKEN_IDS = re.compile(r',"token_ids":\[([0-9,]*)\]')
_PROMPT_IDS = re.compile(r',"prompt_token_ids":\[[0-9,]*\]')
_FINISHED = re.compile(r'"finish_reason":"')
_ENGINE_ERROR = 'data: {"error"'
_DONE = "data: [DONE]"


class EngineFault(Exception):
    """The engine serving a request failed in a way another replica may not: died, stalled, or
    answered with a server error."""

    def __init__(self, reason: str, relayed: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.relayed = relayed  # the client's events of the batch before the failure: still theirs


@dataclass(slots=True)
class Progress:
    """What one request's engines have delivered so far, across its moves."""

    request: EngineRequest
    settings: MigrationSettings
    tool_call_ids: frozenset[int] = frozenset()  # the tokenizer's `<tool_call>`
    generated: list[int] = field(default_factory=list)
    moves: int = 0
    avoid: list[str] = field(default_factory=list)  # replicas that failed this request
    finished: bool = False  # the engine sent the choice's finish_reason
    _first: dict[str, Any] | None = None  # the first leg's id and created, which later legs keep
    _carried: int = 0  # output tokens the current leg's prompt carries
    _later: bool = False  # the client saw an earlier leg's events
    _leg_started: bool = False

    @property
    def tracks(self) -> bool:
        """Whether the engines are asked for token ids: a streamed request that may move."""
        return self.settings.limit > 0 and self.request.stream

    def blocker(self, failed: str | None, running: frozenset[str] | None) -> str | None:
        """Why the request cannot continue on another replica now (None: it can). `failed`: the
        replica that just failed it; `running`: the pool's running replicas (None: not known)."""
        if self.moves >= self.settings.limit:
            return f"the engine failed {self.moves + 1} times"
        # When Serve chose the failed replica without saying which, it may be any running one.
        if running is not None and len(running.difference(self.avoid, (failed,))) < (1 if failed else 2):
            return "no other replica of its pool is running; retry the request"
        if self._first is None:
            return None  # the client has seen nothing: the request starts over
        client = self.request.client
        if getattr(client, "include_reasoning", True) is False:
            return "the engine hid this stream's token ids (include_reasoning: false); retry the request"
        if self.tool_call_ids.intersection(self.generated):
            return "a tool call was cut mid-way by an engine failure; retry the request"
        if self.generated and _constrained(client):
            return "output under a grammar cannot resume on another engine; retry the request"
        return None

    def moved(self, failed_replica: str | None) -> EngineRequest:
        """The request as the next replica runs it: prompt + delivered tokens, the budget left."""
        self.moves += 1
        self._carried = len(self.generated)
        self._later = self._first is not None
        if failed_replica is not None and failed_replica not in self.avoid:
            self.avoid.append(failed_replica)
        self._leg_started = False
        return self.request.continued(tuple(self.generated), tuple(self.avoid))

    def relay(self, batch: list[str]) -> list[str]:
        """One batch of the engine's SSE events as the client gets them: token ids recorded (and
        removed unless the client asked for them); a later leg's role chunk dropped, its id and
        usage made the first leg's. Raises EngineFault on the engine's server-error event, with
        the events before it in the batch, whose tokens the next leg's prompt already holds."""
        out: list[str] = []
        for event in batch:
            if event.startswith(_ENGINE_ERROR):
                _raise_engine_error(event, out)
                out.append(event)  # the client's fault: another replica would refuse it too
            elif event.startswith(_DONE):
                out.append(event)
            elif not self._later:
                out.append(self._first_leg(event))
            elif (kept := self._later_leg(event)) is not None:
                out.append(kept)
        return out

    def _first_leg(self, event: str) -> str:
        if not self.tracks:
            return event
        if self._first is None:
            chunk = json.loads(event.removeprefix("data: "))
            self._first = {"id": chunk.get("id"), "created": chunk.get("created")}
        if _FINISHED.search(event):
            self.finished = True
        keep = self._client_wants_ids
        if (found := _TOKEN_IDS.search(event)) is not None:
            if found.group(1):
                self.generated.extend(int(t) for t in found.group(1).split(","))
            if not keep:
                event = event[: found.start()] + event[found.end() :]
        return event if keep else _PROMPT_IDS.sub("", event, count=1)

    def _later_leg(self, event: str) -> str | None:
        chunk = json.loads(event.removeprefix("data: "))
        first_chunk = not self._leg_started
        self._leg_started = True
        chunk.update(self._first or {})
        chunk.pop("prompt_token_ids", None)
        choices = chunk.get("choices") or []
        if first_chunk and choices and _is_role_chunk(choices[0]):
            return None  # the client had the role at the start
        for choice in choices:
            choice.pop("prompt_token_ids", None)  # completions carry it here: the continued prompt
            ids = choice.get("token_ids") or []
            self.generated.extend(ids)
            if not self._client_wants_ids:
                choice.pop("token_ids", None)
            if choice.get("finish_reason"):
                self.finished = True
        if usage := chunk.get("usage"):
            usage["prompt_tokens"] = len(self.request.prompt)
            usage["completion_tokens"] = usage.get("completion_tokens", 0) + self._carried
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return "data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False) + "\n\n"

    @property
    def _client_wants_ids(self) -> bool:
        return bool(getattr(self.request.client, "return_token_ids", False))


def fault_error(reason: str, model: str) -> GlmserveError:
    return BackendError(f"the {model} engine failed ({reason}); the request was not completed")


def _constrained(client: Any) -> bool:
    response_format = getattr(client, "response_format", None)
    if response_format is not None and getattr(response_format, "type", "text") != "text":
        return True
    if getattr(client, "structured_outputs", None) is not None:
        return True
    tool_choice = getattr(client, "tool_choice", None)
    return tool_choice == "required" or (
        tool_choice not in (None, "auto", "none") and bool(getattr(client, "tools", None))
    )


def _is_role_chunk(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return "role" in delta and not delta.get("content") and not choice.get("token_ids")


def _raise_engine_error(event: str, relayed: list[str]) -> None:
    error = json.loads(event.removeprefix("data: ")).get("error") or {}
    code = error.get("code")
    status = int(str(code)) if str(code).isdigit() else 500
    if status >= 500 and status != 503:
        raise EngineFault(str(error.get("message") or "engine error"), tuple(relayed))
