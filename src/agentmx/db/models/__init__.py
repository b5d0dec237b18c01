"""All tables. Each feature keeps its tables in its own module; importing this registers them all."""

from agentmx.db.models.core import ApiKey, Inbox, Organization, Pod
from agentmx.db.models.runtime import Event, Job

__all__ = ["ApiKey", "Event", "Inbox", "Job", "Organization", "Pod"]
