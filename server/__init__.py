"""pegboard.server: the OpenAI-compatible HTTP server."""
