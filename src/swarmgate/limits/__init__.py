"""Admission and accounting of use: the usage ledger (tiers, limits and budgets join it)."""
