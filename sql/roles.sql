-- The roles of a least-privilege PGFlow deployment (docs/reference/sql-api.md#roles-and-grants).
-- An administrator's script, not a migration: roles belong to the whole cluster, and creating
-- them takes CREATEROLE, which the schema's owner does not need. Run it with psql, as a role
-- with CREATEROLE (a managed service's admin user), connected to the database PGFlow will use:
--
--   psql "postgresql://admin@db.example/app" -f sql/roles.sql \
--     -v owner_password=... -v worker_password=... -v gateway_password=...
--
-- It creates (each only if missing, so it may run again):
--   pgflow_owner    LOGIN, CREATE on this database: runs `pgflow migrate`, owns the schema
--   pgflow_worker   LOGIN: runs `pgflow worker` (claims, reports, leases, defines its flows)
--   pgflow_gateway  LOGIN: runs `pgflow serve` (starts, reads, lists and follows runs)
--   pgflow_pruner   NOLOGIN: may delete finished runs (`pgflow prune`, `worker --retention`);
--                   grant it to the role that prunes: `grant pgflow_pruner to pgflow_worker`
-- None is a superuser or may create roles or databases. The migrations grant pgflow_worker,
-- pgflow_gateway and pgflow_pruner what they need (pgflow._grant_roles), so run this first,
-- then `pgflow migrate --database-url postgresql://pgflow_owner@db.example/app`. If the schema
-- was migrated before these roles existed, have pgflow_owner run `select pgflow._grant_roles()`.
--
-- More logins of the same kind: `create role worker_b login password '...' in role
-- pgflow_worker`. One process that is both (`pgflow serve --with-worker`, `pgflow demo`):
-- `create role app login password '...' in role pgflow_worker, pgflow_gateway`.

\set ON_ERROR_STOP on
\if :{?owner_password}
\else
  do $$ begin raise exception 'sql/roles.sql: give the passwords: psql ... -v owner_password=... '
                              '-v worker_password=... -v gateway_password=...'; end $$;
\endif

-- LOGIN ROLES, with the passwords given
select format('create role %I login password %L', r.name, r.password)
from (values ('pgflow_owner', :'owner_password'),
             ('pgflow_worker', :'worker_password'),
             ('pgflow_gateway', :'gateway_password')) as r (name, password)
where not exists (select from pg_catalog.pg_roles as p where p.rolname = r.name)
\gexec

-- GROUP ROLE: a privilege to grant to a login, never one itself
select 'create role pgflow_pruner nologin'
where not exists (select from pg_catalog.pg_roles as p where p.rolname = 'pgflow_pruner')
\gexec

-- DATABASE: the owner creates the schema pgflow in it; everyone may connect (PUBLIC may by
-- default, unless that was revoked)
grant create, connect on database :"DBNAME" to pgflow_owner;
grant connect on database :"DBNAME" to pgflow_worker, pgflow_gateway;
