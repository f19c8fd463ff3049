"""Built-in tasks, installed as `circuitfind.tasks`."""
