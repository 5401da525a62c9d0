"""synthstream runtime: configuration, topics, stage runner, LLM client, embedded broker, CLI."""

__version__ = "0.1.0"
