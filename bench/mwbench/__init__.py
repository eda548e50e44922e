"""meshwarden benchmark driver modules (Python standard library only)."""
