"""Local stack: embedded services for development and integration tests."""
