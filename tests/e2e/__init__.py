"""Tests against real processes and a real browser."""
