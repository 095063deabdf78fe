"""What runs the process: settings, logs, metrics, embedded servers and ``loyalty serve``."""
