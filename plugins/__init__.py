"""pegboard.plugins: the built-in plugins, each registered exactly like a third-party one."""
