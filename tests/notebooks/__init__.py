"""Tests that execute the notebooks in notebooks/."""
