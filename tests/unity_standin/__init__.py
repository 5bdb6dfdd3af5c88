"""A stand-in for a Unity ML-Agents player that speaks the real gRPC protocol (see player.py)."""
