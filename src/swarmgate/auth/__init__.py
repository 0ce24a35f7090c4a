"""Identity and access: API keys, JWT/OIDC, roles and scopes, IP protection."""
