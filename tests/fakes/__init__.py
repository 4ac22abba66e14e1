"""Test doubles for things the test machine does not have (StarCraft II, SMAC)."""
