-- pyflows 0009 rollback: typed archive tables again, one row per deleted row, with the rows the
-- chunks hold; the delete triggers write them as migration 0004 (and 0006) defined.

do $$
declare
    v_table text;
begin
    foreach v_table in array array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                                   'import_field_mappings', 'assets', 'asset_dependencies'] loop
        execute format('create table pyflows_audit.%I (event_id bigint not null, like pyflows.%I)',
                       v_table || '_typed', v_table);
        execute format('insert into pyflows_audit.%I select * from pyflows_audit.%I', v_table || '_typed', v_table);
        execute format('drop view pyflows_audit.%I', v_table);
        execute format('drop table pyflows_audit.%I', v_table || '_chunks');
        execute format('drop type pyflows_audit.%I', v_table || '_row');
        execute format('alter table pyflows_audit.%I rename to %I', v_table || '_typed', v_table);
        execute format('create index %I on pyflows_audit.%I using brin (event_id)', v_table || '_event', v_table);
        execute format('create trigger refuse_change before update or delete on pyflows_audit.%I '
                       'for each statement execute function pyflows_audit._refuse_change()', v_table);
        execute format('create trigger refuse_truncate before truncate on pyflows_audit.%I '
                       'for each statement execute function pyflows_audit._refuse_change()', v_table);
        execute format('revoke all on pyflows_audit.%I from public', v_table);
    end loop;
end;
$$;

-- AFTER DELETE ... FOR EACH STATEMENT on every audited table: copy the deleted rows into the
-- archive table of the same name and add their number to the event's counts.
create or replace function pyflows_audit._on_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
set enable_seqscan = off
as $$
declare
    v_tenant text := case tg_table_name when 'clients' then 'id, null::uuid'
                                        when 'engagements' then 'client_id, id'
                                        else 'client_id, engagement_id' end;
    v_flow   text := case tg_table_name when 'discovery_flows' then 'id'
                                        when 'data_imports' then 'flow_id'
                                        when 'assets' then 'flow_id'
                                        when 'asset_dependencies' then 'flow_id'
                                        else 'null::uuid' end;
    v_rows       bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flows      bigint;
    v_flow_id    uuid;
    v_event      bigint;
begin
    v_event := pyflows_audit._own_event();
    if v_event is null then
        -- No event of this transaction: look at the rows (tenant, flow) to find or open one.
        execute format(
            'select count(*), count(distinct (t.c, t.e)), min(t.c::text)::uuid, min(t.e::text)::uuid,
                    count(distinct t.f), min(t.f::text)::uuid
               from (select %s, %s from old_rows) as t(c, e, f)', v_tenant, v_flow)
           into v_rows, v_tenants, v_client, v_engagement, v_flows, v_flow_id;
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(tg_table_name, v_tenants, v_client, v_engagement, v_flows,
                                                  v_flow_id);
    end if;
    execute format('insert into pyflows_audit.%I select $1, o.* from old_rows as o', tg_table_name)
      using v_event;
    get diagnostics v_rows = row_count;
    if v_rows = 0 then
        return null;
    end if;
    update pyflows_audit.events
       set deleted = jsonb_set(deleted, array[tg_table_name],
                               to_jsonb(coalesce((deleted ->> tg_table_name)::bigint, 0) + v_rows))
     where id = v_event;
    return null;
end;
$$;
drop function pyflows_audit._archive_statement(text, text);
drop function pyflows_audit._running_purge();
