"""State that outlives a request: the SQL store (SQLite or PostgreSQL), its schema and migrations,
and the repositories over it (API keys, audit log).

``sql.Database`` is the seam; the repositories (``keys.KeyStore``, ``audit.AuditStore``) take it
in their constructor and hold no other state.
"""
