"""The command-line tools channel teams and SREs reach for (``nextbest <tool>``).

* :mod:`.validate` — ``nextbest validate``: check events exactly as the worker would;
* :mod:`.send` — ``nextbest send``: one well-formed event from the shell;
* :mod:`.tail` — ``nextbest tail``: a live view of triggers or dead letters;
* :mod:`.lookup` — ``nextbest context``: a customer's live context from Redis;
* :mod:`.deadletter` — ``nextbest deadletter replay``: re-drive dead letters;
* :mod:`.capture` — the record lines they read and write (kcat's ``-J`` format).

Each module's ``run`` takes the parsed arguments and the settings and returns the
exit status: 0 done, 1 the tool's "no" (an invalid event, an unknown customer, a
broker that does not answer), 2 a usage error.
"""
