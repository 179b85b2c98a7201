"""The fault-injection soak: load, a nemesis, and an oracle that says what was lost.

``make soak`` (``python -m bench.soak``) runs the simulator's paced journeys at a
fixed rate against 2-3 ``nextbest worker`` processes on a Kafka and Redis of its
own, breaks things on a seeded schedule (:mod:`bench.soak.plan`), and at the end
compares what the engine made of its input with what the pure core says it
should have (:mod:`nextbest.oracle`). See the README's "Reliability" section.
"""
