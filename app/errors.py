"""Every error agentq raises, in one tree. Catch :class:`AgentqError` for all of them."""

from __future__ import annotations


class AgentqError(Exception):
    """Base of every agentq error."""


class ConfigurationError(AgentqError):
    """Raised when settings or an agents file are invalid; fix the configuration and restart."""


class CeleryInternalsError(ConfigurationError):
    """Raised at worker start when the installed Celery or kombu lacks a private name agentq
    relies on (``app.celery_ext.PRIVATE_NAMES``); install the versions ``uv.lock`` pins."""


class SubmitError(AgentqError):
    """Raised when a run is refused at submit; nothing was enqueued."""


class UnknownAgentError(SubmitError):
    """Raised when a run names an agent type that is not in the registry."""


class InvalidInputError(SubmitError):
    """Raised when a run's fields are missing, of the wrong type or not JSON-serializable."""


class PayloadTooLargeError(SubmitError):
    """Raised when a run's input exceeds ``limits.max_input_bytes`` once JSON-encoded."""


class InputRejectedError(SubmitError):
    """Raised when one of the agent type's input validators rejects a run's input."""


class IdempotencyConflictError(SubmitError):
    """Raised when an idempotency key is reused for a run with different fields."""


class InferenceError(AgentqError):
    """Base of the errors a model call raises; only :class:`InferenceUnavailableError` (and its
    subclasses) is retried, any other fails the run with error type ``model_error``."""


class ModelRefusedError(InferenceError):
    """Raised when the model server answers a call with an error (not retried)."""


class ModelNotFoundError(ModelRefusedError):
    """Raised when the model server does not have the model an agent names (not retried)."""


class ToolCallParseError(ModelRefusedError):
    """Raised when a reply opens its chat template's tool-call marker but the call does not
    parse (bad JSON, no closing marker, no name, arguments not an object); the step asks the
    model once more, then fails the run with ``reason`` (not retried)."""

    def __init__(self, reason: str, reply: str = "") -> None:
        super().__init__(f"tool call did not parse: {reason}")
        self.reason = reason
        self.reply = reply  # the whole reply (a stream's once it ended), for the repair turn


class ModelCallCancelledError(InferenceError):
    """Raised when a model call in flight is aborted because its run was cancelled (the stream
    or connection is closed, so the server stops generating); the run ends ``cancelled``."""


class InferenceUnavailableError(InferenceError):
    """Raised when no model server could be reached within the deadline (retried later)."""


class NoReplicaAvailableError(InferenceUnavailableError):
    """Raised when every replica is down (circuit breakers open); the step is retried later."""


class ToolError(AgentqError):
    """Raised when a tool is unknown, gets bad arguments or fails; recorded as the step's result."""


class ToolArgumentsError(ToolError):
    """Raised when a model's arguments do not match a tool's schema; the run goes on, with the
    error as the call's result for the model to correct."""


class ToolTimeoutError(ToolError):
    """Raised when a tool call runs past its deadline: the call is abandoned (a subprocess
    running it is killed) and the step records the error for the model."""


class StreamTimeoutError(AgentqError):
    """Raised when a run's token stream shows no end within the reader's timeout."""


class RunFailedError(AgentqError):
    """Raised by ``AsyncResult.get()`` when a run ended without an answer (the reason says why)."""


class GuardrailError(RunFailedError):
    """Raised by ``AsyncResult.get()`` when a run was stopped by one of its guardrails."""


class BudgetExceededError(GuardrailError):
    """Raised by ``AsyncResult.get()`` when a run hit its step, token, tool-call or time budget."""


class OutputRejectedError(GuardrailError):
    """Raised by ``AsyncResult.get()`` when an output validator rejected the run's answer."""


class DeadLetteredError(RunFailedError):
    """Raised by ``AsyncResult.get()`` when a run went to the dead-letter queue (replayable)."""


class NoSuchRunError(DeadLetteredError):
    """Raised by ``AsyncResult.get()`` of a step message whose run does not exist (a later step
    no producer started, e.g. copied arguments); the message is dead-lettered."""


class SessionBusyError(RunFailedError):
    """Raised by ``AsyncResult.get()`` when a run failed because another run of its session was
    running (``AGENTQ_SESSIONS__BUSY=fail``; ``requeue`` makes it wait instead)."""


class RunCancelledError(RunFailedError):
    """Raised by ``AsyncResult.get()`` when a run was cancelled (by ``agentq cancel``, the API,
    :func:`app.cancel` or its parent's cancellation)."""


class ChildRunFailedError(RunFailedError):
    """Raised by ``AsyncResult.get()`` when a run ended because a sub-agent run it delegated to
    failed under the failure policy ``fail``."""


class WaitTimedOutError(RunFailedError):
    """Raised by ``AsyncResult.get()`` when a run's durable wait (a signal, its sub-agents)
    passed its timeout under the timeout policy ``fail``."""


class SignalError(AgentqError):
    """Base of the errors a signal raises: it resumed nothing."""


class UnknownRunError(SignalError):
    """Raised when a signal or a cancellation names a run the store does not have (or another
    tenant's)."""


class RunEndedError(SignalError):
    """Raised when a signal names a run that has ended (succeeded, failed or cancelled)."""


class NotWaitingError(SignalError):
    """Raised when a signal names a run that is not waiting for a signal of that name."""


class SignalTooLargeError(SignalError):
    """Raised when a signal's payload is larger than ``orchestration.signal_max_bytes``."""


class TenantAccessError(AgentqError):
    """Raised when a tenant reads, uses or deletes a run, session or memory of another tenant
    (over HTTP the answer is the same 404 as for one that does not exist)."""


class ForeignSessionError(RunFailedError, TenantAccessError):
    """Raised by ``AsyncResult.get()`` when a run named a session of another tenant; the run
    was refused before it did anything."""


class TenantInUseError(AgentqError):
    """Raised when a tenant is deleted while one of its runs is running (wait for it to end,
    or force the deletion)."""


class SessionInUseError(AgentqError):
    """Raised when a session is deleted while one of its runs is running (wait for it to end,
    or force the deletion)."""


class StoreError(AgentqError):
    """Raised when the session store cannot be reached or its schema is not migrated."""


class MemoryNotFoundError(AgentqError):
    """Raised when a long-term memory id is not among the tenant's memories (another tenant's
    memory reads the same: not found)."""


class InvalidMemoryError(AgentqError):
    """Raised when a memory or a memory search is malformed: an embedding that is not a
    finite, unit-length vector of ``EMBEDDING_DIM`` values, an empty tenant, or ``k`` < 1."""


class UnknownScopeError(AgentqError):
    """Raised when an API key is asked for a scope other than submit, read and operate."""


class BadCursorError(AgentqError):
    """Raised when a run listing is given a cursor it did not give out (pass ``next_cursor``
    as it came)."""


class NotDeadLetteredError(AgentqError):
    """Raised when an operator replays a run that is not in the dead-letter queue."""


class QuarantinedMessageError(AgentqError):
    """Raised when an operator replays a quarantined message: it is no run, nothing replays."""


class LocalServiceError(AgentqError):
    """Raised when an embedded service (Redis, Triton, worker) fails to start or stop."""
