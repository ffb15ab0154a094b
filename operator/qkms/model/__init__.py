"""Pydantic models and enums: one truth for the CRDs, the API and the code."""
