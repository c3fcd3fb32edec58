"""Scheduling (admission) policies, one module per registered name."""
