"""Operator tests: the real kopf operator against an emulated API server (see conftest.py)."""
