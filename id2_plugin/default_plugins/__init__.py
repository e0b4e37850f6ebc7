"""Built-in hook implementations, registered through DEFAULT_PLUGINS like any third-party plugin."""
