"""The HTTP transport: one client API with per-phase timeouts, the one place where transport
errors become :class:`~papin.llm.errors.ProviderError`, and the base of the HTTP providers."""
