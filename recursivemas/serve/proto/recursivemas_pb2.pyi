from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_LATENT: _ClassVar[Mode]
    MODE_TEXT: _ClassVar[Mode]
    MODE_SINGLE: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
MODE_LATENT: Mode
MODE_TEXT: Mode
MODE_SINGLE: Mode

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("model", "prompt", "messages", "max_tokens", "temperature", "top_p", "rounds", "latent_steps", "mode", "stop", "seed", "user", "fields", "include_turns")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TURNS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    max_tokens: int
    temperature: float
    top_p: float
    rounds: int
    latent_steps: int
    mode: Mode
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    user: str
    fields: _containers.ScalarMap[str, str]
    include_turns: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., rounds: _Optional[int] = ..., latent_steps: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., user: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ..., include_turns: _Optional[bool] = ...) -> None: ...

class AgentUsage(_message.Message):
    __slots__ = ("agent", "turns", "prompt_tokens", "latent_steps", "decoded_tokens", "tool_calls")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    DECODED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    turns: int
    prompt_tokens: int
    latent_steps: int
    decoded_tokens: int
    tool_calls: int
    def __init__(self, agent: _Optional[str] = ..., turns: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., latent_steps: _Optional[int] = ..., decoded_tokens: _Optional[int] = ..., tool_calls: _Optional[int] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("agent", "round", "kind", "latent_steps", "decoded_tokens", "prompt_tokens", "wall_s", "tool_calls")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    DECODED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    round: int
    kind: str
    latent_steps: int
    decoded_tokens: int
    prompt_tokens: int
    wall_s: float
    tool_calls: int
    def __init__(self, agent: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[str] = ..., latent_steps: _Optional[int] = ..., decoded_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., wall_s: _Optional[float] = ..., tool_calls: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "mode", "rounds", "latent_steps", "latent_steps_total", "wall_s", "agents", "turns")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mode: str
    rounds: int
    latent_steps: int
    latent_steps_total: int
    wall_s: float
    agents: _containers.RepeatedCompositeFieldContainer[AgentUsage]
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., mode: _Optional[str] = ..., rounds: _Optional[int] = ..., latent_steps: _Optional[int] = ..., latent_steps_total: _Optional[int] = ..., wall_s: _Optional[float] = ..., agents: _Optional[_Iterable[_Union[AgentUsage, _Mapping]]] = ..., turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("id", "model", "text", "finish_reason", "usage")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class RunStreamChunk(_message.Message):
    __slots__ = ("id", "model", "delta", "finish_reason", "usage", "turn")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    delta: str
    finish_reason: str
    usage: Usage
    turn: Turn
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., delta: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., turn: _Optional[_Union[Turn, _Mapping]] = ...) -> None: ...
