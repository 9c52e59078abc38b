"""Stand-in services the project owns, for backends whose real service is a cloud API."""
