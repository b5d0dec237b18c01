"""Parsing request bodies into pydantic models, with errors in AgentMail's 400 shape."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agentmx.errors import ValidationFailed
from agentmx.http.deps import body_object

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Base of every request body: strict types, unknown fields ignored (forward compatible)."""

    model_config = ConfigDict(extra="ignore", strict=True)


def parse(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body_object(body))
    except ValidationError as exc:
        errors = [{"path": [str(p) for p in err["loc"]], "message": err["msg"]} for err in exc.errors()]
        first = errors[0]
        raise ValidationFailed(f"{'.'.join(first['path']) or 'body'}: {first['message']}", errors) from exc


def given(model: BaseModel, name: str) -> bool:
    return name in model.model_fields_set
