"""The seam to model servers: pooled HTTP client, timeouts, SSE framing."""
