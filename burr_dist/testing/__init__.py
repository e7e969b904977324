"""Chaos testing support: histories of what workers did, and a checker for them."""
