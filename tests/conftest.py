"""Shared pytest configuration for vuser's host-side suite."""
