"""Recovery as wrapper providers: retries now; replicas, circuit breakers and fallback chains
build on the same shape (:class:`~papin.llm.wrapper.WrapperProvider`), so the manager, the CLI
and the gateway use them unchanged and no backend is special-cased."""

from papin.llm.router.retry import RecoveryEvent, RecoveryHub, RetryingProvider, is_retryable, retry_delay

__all__ = ["RecoveryEvent", "RecoveryHub", "RetryingProvider", "is_retryable", "retry_delay"]
