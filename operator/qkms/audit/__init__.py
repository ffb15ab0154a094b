"""Audit entries and where they go."""
