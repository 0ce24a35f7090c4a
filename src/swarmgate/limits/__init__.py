"""Admission control: tiers and limits (config), the pure decisions (GCRA, exact sliding
windows, concurrency leases, token reservations) and ``Admission``, the pipeline stage.

``tiers`` imports nothing of ours (the config loader builds on it); the other modules sit
above ``store.counters``, where the counters live.
"""
