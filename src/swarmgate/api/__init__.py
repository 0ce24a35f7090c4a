"""The ASGI application: the plain hot path for /v1, a framework only for management."""
