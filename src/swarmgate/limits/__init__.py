"""Admission control: tiers, limits, and the priority queue for a slot under saturation."""
