"""nextbest: a streaming real-time customer context engine."""

__version__ = "0.1.0"
