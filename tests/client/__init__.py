"""Tests of the Python SDK against a real API server process."""
