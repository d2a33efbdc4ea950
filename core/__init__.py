"""Reelforge's headless engine: two prompts in, a verified video out, every step persisted."""
