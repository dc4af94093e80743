"""What the engine keeps on disk besides its outbox: the case registry
(:mod:`storage.registry`), the evidence record (:mod:`storage.evidence`), and the durable
SQLite files and write retries they and the journal share (:mod:`storage.store`,
:mod:`storage.backlog`)."""
