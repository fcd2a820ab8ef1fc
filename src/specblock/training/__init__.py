"""Drafter training pieces (issue 3 builds on these)."""
