"""Reasoners: write a retrieval-oriented reasoning trace per item (Think-Then-Embed, step one)."""
