"""Built-in schedulers. Nothing is imported here: each backend loads when it is chosen."""
