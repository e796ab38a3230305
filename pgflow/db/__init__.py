"""The database boundary: the one package that imports asyncpg.

    connection.py   standalone connections and the pool, with PGFlow's JSON codecs
    translation.py  asyncpg's exceptions and SQLSTATEs -> PGFlow's errors (pgflow/errors.py)
    store.py        every SQL call the worker and the gateway make
    listen.py       the LISTEN connection, kept alive (health probe, reconnect, RESYNC)
    backoff.py      the one backoff rule for trying the database again
    migrate.py      applies sql/migrations
    local_server.py the embedded PostgreSQL server, and command.py (`pgflow db`) driving it
"""
