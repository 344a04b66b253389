"""Persistence: the SQLModel tables, engine and sessions, leases, the auth hold and the read-side reports."""
