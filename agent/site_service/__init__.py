"""Site-side request handling, independent of Flower: policy, refusals, durable state, guarded replies."""

from agent.site_service.engine import LocalData, RoundOutcome, TrainingEngine
from agent.site_service.handlers import handle_ksalsa, handle_status, handle_synthesize, handle_train, refusal

__all__ = [
    "LocalData", "RoundOutcome", "TrainingEngine", "handle_ksalsa", "handle_status", "handle_synthesize", "handle_train",
    "refusal",
]
