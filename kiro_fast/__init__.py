"""kiro_fast: a fast Anthropic / OpenAI compatible proxy for Kiro accounts."""

__version__ = "0.1.0"
