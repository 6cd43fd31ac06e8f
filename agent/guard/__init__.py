"""The egress guard: nothing leaves a site unless it matches an allowed message schema.

Every reply the ClientApp sends passes :func:`check_outgoing` first; anything else is blocked,
logged (reason only, never the content) and replaced by a structured refusal.
"""

from agent.guard.egress import ClaimPins, EgressPolicy, check_outgoing, real_fingerprints
from agent.guard.strings import find_identifying_text

__all__ = ["ClaimPins", "EgressPolicy", "check_outgoing", "find_identifying_text", "real_fingerprints"]
