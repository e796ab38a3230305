-- The schema that holds the engine: its tables and the functions that are its only writers.
-- Python never writes these tables directly: the functions are the engine
-- (docs/design/sql-contract.md). `if not exists`: pgflow migrate creates the schema first, to
-- hold its bookkeeping table pgflow.schema_migrations.

create schema if not exists pgflow;
