"""Alembic migrations for alertq's schema (run with ``alertq db upgrade``)."""
