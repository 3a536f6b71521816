"""Built-in plugins other than backends and transports (event sinks)."""
