"""Model names → pools of deployments → one deployment per request (pure decisions)."""
