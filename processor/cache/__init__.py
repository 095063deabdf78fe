"""The Redis account cache (accounts) and its compression dictionary (compression)."""
