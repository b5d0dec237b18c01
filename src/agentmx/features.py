"""Every feature module that registers job handlers or background services, imported once at start-up."""

from __future__ import annotations

import importlib

FEATURE_MODULES: list[str] = [
    "agentmx.services.lists",  # list hooks: send checks, blocked label, bounce suppression
]
FEATURE_MODULES.append("agentmx.mail.feature")
FEATURE_MODULES.append("agentmx.services.draft_send")  # send_draft job (scheduled drafts)

FEATURE_MODULES.append("agentmx.events.feature")  # webhook delivery job, live event hub
FEATURE_MODULES.append("agentmx.outbound.feature")  # deliver_outbound job, DSN intake
FEATURE_MODULES.append("agentmx.domains.feature")  # check_domain job, custom-domain inbox rules, DKIM keys


def load() -> None:
    for name in FEATURE_MODULES:
        importlib.import_module(name)
