"""An SMTP front end reads its settings from the server's checked values without pydantic
(smtp/front_settings.py): what it derives must be what the server's Settings derives."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agentmx.settings import Settings
from agentmx.smtp.front_settings import FrontEndSettings, SmtpSettings
from agentmx.smtp.workers import _settings_for

PROPERTIES = [name for name in vars(SmtpSettings) if not name.startswith("_")]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "host": "0.0.0.0",
            "smtp_host": "127.0.0.1",
            "public_host": "mx.example.org",
            "domain": "example.org",
            "smtp_trusted_networks": " 10.0.0.0/8, 192.168.1.7 ,::1/128,",
            "smtp_hop_limit": 7,
            "smtp_timeout": 12.5,
        },
    ],
)
def test_a_front_end_reads_every_setting_as_the_server_does(values: dict[str, Any]) -> None:
    server = Settings(**values)
    front = FrontEndSettings.of(_settings_for(SimpleNamespace(settings=server)))  # type: ignore[arg-type]
    assert PROPERTIES  # the Protocol lists what sessions read
    for name in PROPERTIES:
        assert getattr(front, name) == getattr(server, name), name
