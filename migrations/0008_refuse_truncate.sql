-- pyflows 0008: TRUNCATE of a tenant table is refused.
--
-- TRUNCATE fires no DELETE trigger, so it would remove rows without archiving them or writing an
-- event. Applications have no TRUNCATE privilege; the owner (and a superuser) do, and a BEFORE
-- TRUNCATE trigger now refuses it on every tenant table. Rows go through delete_flow, purge_flow or a
-- DELETE (audited as 'sql.delete'). A superuser can still disable triggers: docs/security.md says so.
-- depends: 0007_refuse_rows_per_shape

create function pyflows_audit._refuse_truncate()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit
as $$
begin
    raise exception 'TRUNCATE of %.% would remove rows without auditing them', tg_table_schema, tg_table_name
        using errcode = 'PF403',
              hint = 'Delete with pyflows.delete_flow or pyflows.purge_flow, or with DELETE (audited as sql.delete).';
end;
$$;

revoke all on function pyflows_audit._refuse_truncate() from public;

create trigger refuse_truncate before truncate on pyflows.clients
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.engagements
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.discovery_flows
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.data_imports
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.raw_import_records
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.import_field_mappings
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.assets
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.asset_dependencies
    for each statement execute function pyflows_audit._refuse_truncate();
create trigger refuse_truncate before truncate on pyflows.file_cleanup_queue
    for each statement execute function pyflows_audit._refuse_truncate();
