"""pegboard.core: hook specs, plugin board, request types, scheduler, engine and model runner."""
