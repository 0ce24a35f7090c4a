"""Admission control and accounting of use: tiers and limits (config), the pure decisions
(GCRA, exact sliding windows, concurrency leases, token reservations), ``Admission``, the
pipeline stage, the priority queue for a slot of a saturated model, and the usage ledger.

``tiers`` imports nothing of ours (the config loader builds on it); the other modules sit
above ``store.counters``, where the counters live.
"""
