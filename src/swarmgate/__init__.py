"""swarmgate: one OpenAI-compatible door to a swarm of model servers."""

__version__ = "0.1.0"
