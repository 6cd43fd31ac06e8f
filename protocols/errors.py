"""One error hierarchy for the whole project, grouped by who is at fault.

Every error carries an exit code (used by the CLI) and a message that states the rule, what was
expected versus what was found, and the way out. Raise with ``from exc`` to keep the cause.
"""

from __future__ import annotations


class AnonfedError(Exception):
    """Base of every error anonfed raises on purpose."""

    exit_code: int = 1
    help_text: str = "anonfed failed; the message above says why."


# -- bad input: the operator or the data is at fault ------------------------------------------
class BadInputError(AnonfedError):
    """Input that cannot be used as given (a file, a flag, a config value)."""

    exit_code = 2
    help_text = "Fix the input named in the message and run the command again."


class ConfigError(BadInputError):
    """A site or consortium configuration file is invalid."""

    exit_code = 3
    help_text = "Edit the configuration key named in the message; see deploy/examples/ for valid files."


class IngestError(BadInputError):
    """One input file or series cannot be ingested; it is quarantined with this reason."""

    exit_code = 4
    help_text = "The file was quarantined and left untouched; see `anonfed quarantine` for reasons."


class MessageSchemaError(BadInputError):
    """A message between agent and coordinator does not match its schema in protocols/messages.py."""

    exit_code = 5
    help_text = "The peer sent a message this version does not understand; update the older side."


# -- policy: the request is well formed but not allowed ---------------------------------------
class PolicyError(AnonfedError):
    """A request violates a privacy policy (site or consortium)."""

    exit_code = 10
    help_text = "The privacy policy refused the request; it is not retried automatically."


class BudgetExceededError(PolicyError):
    """Training would push cumulative epsilon past the allowed budget."""

    exit_code = 11
    help_text = "The site's epsilon budget is spent; a larger budget needs a policy change at the site."


class KAnonymityError(PolicyError):
    """A release would contain a group with fewer than k distinct patients."""

    exit_code = 12
    help_text = "Lower k is never applied silently: add patients or raise the group size."


class EgressBlockedError(PolicyError):
    """An outgoing message did not match an allowed schema and was not sent."""

    exit_code = 13
    help_text = "Only DP weights, aggregate metrics, synthetic outputs and signed claims may leave a site."


class TaskRefusedError(PolicyError):
    """The site does not accept this task (not in its policy)."""

    exit_code = 14
    help_text = "Add the task to privacy.accepted_tasks in the site config if the site agrees to it."


class LedgerBehindError(PolicyError):
    """The coordinator's ledger lacks more of the site's claims than one reply can carry.

    The site does no work for the request (nothing is trained or released, no budget is spent) and
    sends the oldest missing claims instead (``resend``, signed claim bytes).
    """

    exit_code = 15
    help_text = "Run the round again: each refusal brings the ledger closer to the site's claim log."

    def __init__(self, message: str, resend: tuple[bytes, ...] = ()) -> None:
        super().__init__(message)
        self.resend = resend


# -- integrity: evidence does not check out ---------------------------------------------------
class IntegrityError(AnonfedError):
    """Stored or received evidence failed a check (hash, signature, chain, accountant state)."""

    exit_code = 20
    help_text = "Evidence failed verification; do not trust the data and investigate the named entry."


class ChainError(IntegrityError):
    """The ledger hash chain is broken (edit, deletion, reordering, truncation)."""

    exit_code = 21
    help_text = "The ledger chain is broken at the named entry; compare with the sites' own copies."


class SignatureError(IntegrityError):
    """A signature does not verify with the expected public key."""

    exit_code = 22
    help_text = "A signature is invalid or made with the wrong key; check the key export used."


class AccountingError(IntegrityError):
    """A recorded epsilon does not match the mechanism parameters, or accountant state is bad."""

    exit_code = 23
    help_text = "A recorded privacy cost is inconsistent; recompute it from the mechanism parameters."


# -- transport: peers and services -------------------------------------------------------------
class TransportError(AnonfedError):
    """A peer or service (Flower, PACS) could not be reached or answered wrongly."""

    exit_code = 30
    help_text = "Check that the service is running and reachable, and the credentials."


class AuthenticationError(TransportError):
    """A service rejected our credentials."""

    exit_code = 31
    help_text = "The credentials were rejected; check the username/password (never logged)."


def all_error_classes() -> list[type[AnonfedError]]:
    """Every AnonfedError subclass, for the CLI's exit-code table and its test."""
    seen: list[type[AnonfedError]] = []
    stack: list[type[AnonfedError]] = [AnonfedError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
