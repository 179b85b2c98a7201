"""``nextbest api``: live customer context over HTTP and Server-Sent Events."""
