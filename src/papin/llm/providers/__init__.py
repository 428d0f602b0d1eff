"""Provider implementations. Import a submodule explicitly (``papin.llm.providers.ollama``);
this package imports none of them, so no backend package is loaded by accident."""
