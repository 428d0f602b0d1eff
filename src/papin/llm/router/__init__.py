"""Recovery as wrapper providers: retries, replicas with circuit breakers, fallback chains, all
of the same shape (:class:`~papin.llm.wrapper.WrapperProvider`), so the manager, the CLI
and the gateway use them unchanged and no backend is special-cased."""

from papin.llm.router.breaker import CircuitBreaker
from papin.llm.router.fallback import Fallback, FallbackChain
from papin.llm.router.hub import RecoveryHub
from papin.llm.router.replicas import ReplicaSet, replicate
from papin.llm.router.retry import RecoveryEvent, RetryingProvider, is_retryable, retry_delay

__all__ = [
    "CircuitBreaker",
    "Fallback",
    "FallbackChain",
    "RecoveryEvent",
    "RecoveryHub",
    "ReplicaSet",
    "RetryingProvider",
    "is_retryable",
    "replicate",
    "retry_delay",
]
