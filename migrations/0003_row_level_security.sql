-- pyflows 0003: the tenant context helpers, row-level security on every tenant table, and grants.
--
-- The helpers read the transaction-local settings written by pyflows.set_context (sql/010_context.sql).
-- They are STABLE SQL functions with no SET clause and no SECURITY DEFINER, so the planner inlines
-- them into the policies; everything they call is schema-qualified instead of pinning search_path.
-- After a transaction that set a value locally the setting reads '' rather than NULL: nullif maps it back.
-- depends: 0002_tenant_tables

create function pyflows.current_client_id()
returns uuid
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.client_id', true), '')::uuid $$;

create function pyflows.current_engagement_id()
returns uuid
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.engagement_id', true), '')::uuid $$;

create function pyflows.current_actor()
returns text
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.actor', true), '') $$;

alter table pyflows.clients enable row level security;
alter table pyflows.clients force row level security;
create policy tenant_isolation on pyflows.clients
    using (id = pyflows.current_client_id())
    with check (id = pyflows.current_client_id());

alter table pyflows.engagements enable row level security;
alter table pyflows.engagements force row level security;
create policy tenant_isolation on pyflows.engagements
    using (client_id = pyflows.current_client_id() and id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and id = pyflows.current_engagement_id());

alter table pyflows.discovery_flows enable row level security;
alter table pyflows.discovery_flows force row level security;
create policy tenant_isolation on pyflows.discovery_flows
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

alter table pyflows.data_imports enable row level security;
alter table pyflows.data_imports force row level security;
create policy tenant_isolation on pyflows.data_imports
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

alter table pyflows.raw_import_records enable row level security;
alter table pyflows.raw_import_records force row level security;
create policy tenant_isolation on pyflows.raw_import_records
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

alter table pyflows.import_field_mappings enable row level security;
alter table pyflows.import_field_mappings force row level security;
create policy tenant_isolation on pyflows.import_field_mappings
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

alter table pyflows.assets enable row level security;
alter table pyflows.assets force row level security;
create policy tenant_isolation on pyflows.assets
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

alter table pyflows.asset_dependencies enable row level security;
alter table pyflows.asset_dependencies force row level security;
create policy tenant_isolation on pyflows.asset_dependencies
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

alter table pyflows.file_cleanup_queue enable row level security;
alter table pyflows.file_cleanup_queue force row level security;
create policy tenant_isolation on pyflows.file_cleanup_queue
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
    with check (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

-- Least privilege for applications (docs/architecture.md, "Roles"): reference data and tenants are
-- read-only; the flow tree is written under a tenant context that RLS WITH CHECK keeps in place;
-- the file queue is read-only (it is written by triggers and drained through functions).
revoke all on all tables in schema pyflows from public;
revoke all on all functions in schema pyflows from public;

grant select on pyflows.phases, pyflows.clients, pyflows.engagements to pyflows_app;
grant select, insert, update, delete on
    pyflows.discovery_flows, pyflows.data_imports, pyflows.raw_import_records,
    pyflows.import_field_mappings, pyflows.assets, pyflows.asset_dependencies
    to pyflows_app;
grant select on pyflows.file_cleanup_queue to pyflows_app;
grant execute on function
    pyflows.current_client_id(), pyflows.current_engagement_id(), pyflows.current_actor()
    to pyflows_app;

-- pyflows_admin acts as an application too, and across tenants only through the admin_ functions.
grant pyflows_app to pyflows_admin;
