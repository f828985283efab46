"""pegboard.plugins.bench: the ``pegboard bench`` commands (throughput, serve) and their prompts and figures."""
