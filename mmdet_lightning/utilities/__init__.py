"""Helpers that talk to no training code: reading W&B offline runs back."""
