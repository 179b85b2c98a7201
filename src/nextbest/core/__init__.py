"""The pure core: every decision nextbest makes, free of I/O.

Nothing in this package imports faust, aiokafka, redis or asyncio, or reads a
clock: the caller passes ``now``. A unit test of any decision is a function call.
"""
