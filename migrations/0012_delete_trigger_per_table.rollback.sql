-- pyflows 0012 rollback: the shared delete trigger function of migration 0010 again.

-- The API event open for rows in this transaction, or NULL. The setting names which event to look at
-- (one lookup by key); the event itself says whether it is open, and only the owner's code writes it.
create function pyflows_audit._own_event()
returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
    select e.id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and e.details ->> 'open_txid' = txid_current()::text
$$;
revoke all on function pyflows_audit._own_event() from public;

create or replace function pyflows_audit._on_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set enable_sort = off
set work_mem = '64MB'
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
    v_clients    bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flows      bigint;
    v_flow_id    uuid;
    v_event      bigint;
begin
    v_event := pyflows_audit._own_event();
    if v_event is null then
        -- No API event is open: look at the rows (tenant, flow) to find or open the statement's event.
        execute format(
            'select count(*), count(distinct t.c), count(distinct (t.c, t.e)), min(t.c::text)::uuid,
                    min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
               from (select %s, %s from old_rows) as t(c, e, f)', v_tenant, v_flow)
           into v_rows, v_clients, v_tenants, v_client, v_engagement, v_flows, v_flow_id;
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(tg_table_name, v_clients, v_tenants, v_client, v_engagement,
                                                  v_flows, v_flow_id);
    end if;
    execute pyflows_audit._archive_statement(tg_table_name, 'old_rows')
      into v_rows
      using v_event;
    if v_rows = 0 then
        return null;
    end if;
    update pyflows_audit.events
       set deleted = jsonb_set(deleted, array[tg_table_name],
                               to_jsonb(coalesce((deleted ->> tg_table_name)::bigint, 0) + v_rows))
     where id = v_event;
    if tg_table_name = 'data_imports' then  -- (built with format: plpgsql_check checks every table's branch)
        execute format('insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id,
                                                                import_id, event_id)
                        select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id, $1 from %I as o',
                       'old_rows')
          using v_event;
    end if;
    return null;
end;
$$;

revoke all on function pyflows_audit._on_delete() from public;

create or replace trigger audit_delete after delete on pyflows.clients
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.engagements
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.discovery_flows
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.data_imports
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.raw_import_records
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.import_field_mappings
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.assets
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create or replace trigger audit_delete after delete on pyflows.asset_dependencies
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();

drop function pyflows_audit._on_delete_clients();
drop function pyflows_audit._on_delete_engagements();
drop function pyflows_audit._on_delete_discovery_flows();
drop function pyflows_audit._on_delete_data_imports();
drop function pyflows_audit._on_delete_raw_import_records();
drop function pyflows_audit._on_delete_import_field_mappings();
drop function pyflows_audit._on_delete_assets();
drop function pyflows_audit._on_delete_asset_dependencies();
drop function pyflows_audit._create_delete_trigger(text);
-- migration 0009's statement, standing alone again
create or replace function pyflows_audit._archive_statement(p_table text, p_source text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'with chunk as (
             insert into pyflows_audit.%1$I (event_id, row_count, rows)
             select $1, count(*), array_agg(s.r) from (%2$s) as s group by s.big, s.n
             returning row_count)
         select coalesce(sum(chunk.row_count), 0) from chunk',
        p_table || '_chunks',
        case when exists (select from pg_catalog.pg_attribute as a
                           where a.attrelid = pg_catalog.to_regclass('pyflows.' || quote_ident(p_table))
                             and a.attname = 'id' and a.atttypid = 'bigint'::regtype)
             then format('select t.r, pg_catalog.pg_column_size(t.r) > 16384 as big,
                                 case when pg_catalog.pg_column_size(t.r) > 16384 then t.id else t.id / 10000 end as n
                            from (select row(o.*)::pyflows_audit.%I as r, o.id from %s as o offset 0) as t',
                         p_table || '_row', p_source)
             else format('select t.r, false as big,
                                 sum(pg_catalog.pg_column_size(t.r)) over (rows unbounded preceding) / 8388608 as n
                            from (select row(o.*)::pyflows_audit.%I as r from %s as o) as t',
                         p_table || '_row', p_source)
        end)
$$;
drop function pyflows_audit._chunk_statement(text, text, text);
drop function pyflows_audit._unowned_row(text);
drop function pyflows_audit._archived_counts(bigint);

create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
begin
    update pyflows_audit.events as e
       set details = e.details - 'open_txid'
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and e.details ->> 'open_txid' = txid_current()::text;
    perform set_config('pyflows.audit_event', '', true);
    perform set_config('pyflows.audit_statement', '', true);
end;
$$;


-- Open an existing event for the rows this transaction deletes next (a purge batch, a purge's last
-- step), until _end_event. Only the SECURITY DEFINER purge steps call it, after checking the event.
create or replace function pyflows_audit._open_event(p_event bigint)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    update pyflows_audit.events as e
       set details = e.details || jsonb_build_object('open_txid', txid_current()::text)
     where e.id = p_event;
    perform set_config('pyflows.audit_event', p_event::text, true);
end;
$$;

create or replace function pyflows_audit._begin_event(p_action text, p_flow_id uuid, p_reason text, p_impact jsonb,
                                                      p_snapshot jsonb, p_forced boolean default false,
                                                      p_details jsonb default '{}')
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_id bigint;
begin
    insert into pyflows_audit.events
        (action, actor, client_id, engagement_id, flow_id, batch_id, reason, forced, impact, flow_snapshot,
         statement, details)
    values
        (p_action, pyflows.current_actor(), pyflows.current_client_id(), pyflows.current_engagement_id(),
         p_flow_id, nullif(current_setting('pyflows.audit_batch', true), '')::uuid, p_reason, p_forced,
         p_impact, p_snapshot, current_query(),
         coalesce(p_details, '{}')
           || case when p_action = 'flow.delete' then jsonb_build_object('open_txid', txid_current()::text)
                   else '{}'::jsonb end)
    returning id into v_id;
    perform set_config('pyflows.audit_event', case when p_action = 'flow.delete' then v_id::text else '' end, true);
    return v_id;
end;
$$;
drop function pyflows_audit._begin_events(text, uuid[], text, jsonb[], jsonb[], boolean, jsonb);

create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_open_purge boolean := old.action = 'flow.purge' and old.details ->> 'state' = 'running';
begin
    if (to_jsonb(new) - 'deleted' - 'details') <> (to_jsonb(old) - 'deleted' - 'details')
       or (old.txid <> txid_current() and not v_open_purge) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;
