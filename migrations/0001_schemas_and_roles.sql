-- pyflows 0001: the two schemas and the two cluster roles.
--
-- Roles are cluster-wide and shared by every database that runs pyflows, so they are created
-- when missing and never dropped by a rollback (see docs/architecture.md).
create schema pyflows;

create schema pyflows_audit;

comment on schema pyflows is 'pyflows: discovery flows, their imports, records, mappings, assets and dependencies';

comment on schema pyflows_audit is 'pyflows: append-only audit trail of flow deletions and their archived rows';

-- Which sql/ definitions were applied last (pyflows check compares it with the installed package).
create table pyflows.installed_sql (
    singleton        boolean not null default true,
    digest           text not null,
    pyflows_version  text not null,
    applied_at       timestamptz not null default now(),
    constraint installed_sql_pkey primary key (singleton),
    constraint installed_sql_singleton_check check (singleton)
);

do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'pyflows_app') then
        create role pyflows_app nologin nosuperuser nocreatedb nocreaterole nobypassrls;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'pyflows_admin') then
        create role pyflows_admin nologin nosuperuser nocreatedb nocreaterole nobypassrls;
    end if;
end
$$;

grant usage on schema pyflows to pyflows_app, pyflows_admin;

grant usage on schema pyflows_audit to pyflows_app, pyflows_admin;

-- Nothing created later in these schemas is reachable by PUBLIC unless granted on purpose.
revoke all on schema pyflows from public;

revoke all on schema pyflows_audit from public;
