"""Helpers that start real local servers for integration tests (see DESIGN.md, "Real systems")."""
