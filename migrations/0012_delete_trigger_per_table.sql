-- pyflows 0012: one delete trigger function per audited table, with static SQL, and a flow.delete
-- event's counts taken from its archive once, when it closes.
--
-- A small flow's audited delete cost about 3.5 ms where the cascade alone costs 0.3 ms, nearly all
-- of it in the eight statement-level triggers it fires: the shared trigger function built its archive
-- statement as text (a catalog lookup) and ran it with EXECUTE, parsed and planned anew on every
-- firing, and updated the event's counts once per table, each update checked by the append-only guard
-- through two jsonb conversions of the whole event. Now:
--   * pyflows_audit._on_delete_<table>() is generated for each table by _create_delete_trigger: the
--     same logic as _on_delete(), with the archive statement written into its body, so its plans are
--     made once per session and kept; plpgsql_check reads every statement against its own table;
--   * a flow.delete event's per-table counts are summed from its chunks by _end_event (one index lookup
--     per table) rather than added by each trigger; purge batches and sql.delete events still count as
--     they go (a purge spans many transactions);
--   * the append-only guard compares the event's other columns as a row, not as jsonb.
-- A later migration that changes a table's archive (its _row type) calls
-- pyflows_audit._create_delete_trigger('<table>') again.
-- depends: 0011_one_index_per_lookup

-- Events that a transaction may still change: the counts and details of an event inside the
-- transaction that created it, and those of a purge while it runs. Nothing else changes.
create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_same pyflows_audit.events := new;
begin
    v_same.deleted := old.deleted;
    v_same.details := old.details;
    if v_same is distinct from old
       or (old.txid <> txid_current() and not (old.action = 'flow.purge' and old.details ->> 'state' = 'running')) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;

-- What an event archived, per table: {"assets": 5, ...}, tables with no rows left out. One lookup by
-- event in each table's chunks, never a scan (a batch grows the chunks as it goes, and a scan planned
-- while they were small would make it quadratic, see migration 0006). PL/pgSQL, so that the plan is
-- made once per session: a SQL function called from a statement is planned on every execution.
create function pyflows_audit._archived_counts(p_event bigint)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
declare
    v_counts jsonb;
begin
    select coalesce(jsonb_object_agg(c.t, c.n) filter (where c.n > 0), '{}') into v_counts
      from (select 'clients', (select sum(x.row_count) from pyflows_audit.clients_chunks as x where x.event_id = p_event)
            union all
            select 'engagements', (select sum(x.row_count) from pyflows_audit.engagements_chunks as x
                                    where x.event_id = p_event)
            union all
            select 'discovery_flows', (select sum(x.row_count) from pyflows_audit.discovery_flows_chunks as x
                                        where x.event_id = p_event)
            union all
            select 'data_imports', (select sum(x.row_count) from pyflows_audit.data_imports_chunks as x
                                     where x.event_id = p_event)
            union all
            select 'raw_import_records', (select sum(x.row_count) from pyflows_audit.raw_import_records_chunks as x
                                           where x.event_id = p_event)
            union all
            select 'import_field_mappings', (select sum(x.row_count) from pyflows_audit.import_field_mappings_chunks as x
                                              where x.event_id = p_event)
            union all
            select 'assets', (select sum(x.row_count) from pyflows_audit.assets_chunks as x where x.event_id = p_event)
            union all
            select 'asset_dependencies', (select sum(x.row_count) from pyflows_audit.asset_dependencies_chunks as x
                                           where x.event_id = p_event)) as c(t, n);
    return v_counts;
end;
$$;

-- Close the open API event: later deletes are audited on their own, whatever the settings say. A
-- flow.delete event's counts are what its chunks hold.
create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
declare
    v_event bigint := nullif(current_setting('pyflows.audit_event', true), '')::bigint;
begin
    update pyflows_audit.events as e
       set details = e.details - 'open_txid',
           deleted = case when e.action = 'flow.delete' then pyflows_audit._archived_counts(v_event) else e.deleted end
     where e.id = v_event and e.details ->> 'open_txid' = txid_current()::text;
    perform set_config('pyflows.audit_event', '', true);
    perform set_config('pyflows.audit_statement', '', true);
end;
$$;

-- (Re)create pyflows_audit._on_delete_<p_table>() and the table's audit_delete trigger.
--
-- AFTER DELETE ... FOR EACH STATEMENT: write the deleted rows into the archive (chunks under the
-- event, see _archive_statement), count them on the event unless it is a flow.delete (counted when it
-- closes), and for imports queue their stored files under the same event. The event is the API's open
-- event, else the statement's sql.delete event (found or opened by _statement_event after one pass over
-- the rows). The chunks are built by hash aggregation in memory (work_mem 64MB, times
-- hash_mem_multiplier), spilling to disk past it; sorting is off (see migration 0009).
create function pyflows_audit._create_delete_trigger(p_table text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $make$
declare
    v_function text := '_on_delete_' || p_table;
    v_tenant   text := case p_table when 'clients' then 't.id, null::uuid'
                                    when 'engagements' then 't.client_id, t.id'
                                    else 't.client_id, t.engagement_id' end;
    v_flow     text := case p_table when 'discovery_flows' then 't.id'
                                    when 'data_imports' then 't.flow_id'
                                    when 'assets' then 't.flow_id'
                                    when 'asset_dependencies' then 't.flow_id'
                                    else 'null::uuid' end;
    v_queue    text := case when p_table = 'data_imports' then
        'insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id, event_id)
    select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id, v_event from old_rows as o;'
        else '' end;
begin
    if p_table is null or pg_catalog.to_regclass('pyflows_audit.' || quote_ident(p_table || '_chunks')) is null then
        raise exception 'no archive for table %', p_table using errcode = 'PF422';
    end if;
    execute format($function$
create or replace function pyflows_audit.%1$I()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set enable_sort = off
set work_mem = '64MB'
as $body$
declare
    v_event      bigint;
    v_counted    boolean;
    v_rows       bigint;
    v_clients    bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flows      bigint;
    v_flow_id    uuid;
begin
    -- The API event open for rows in this transaction (the setting names which event to look at; the
    -- event itself says whether it is open, and only the owner's code writes it).
    select e.id, e.action = 'flow.delete' into v_event, v_counted
      from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and e.details ->> 'open_txid' = txid_current()::text;
    if v_event is null then
        select count(*), count(distinct t.c), count(distinct (t.c, t.e)), min(t.c::text)::uuid,
               min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
          into v_rows, v_clients, v_tenants, v_client, v_engagement, v_flows, v_flow_id
          from (select %2$s, %3$s from old_rows as t) as t(c, e, f);
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(%4$L, v_clients, v_tenants, v_client, v_engagement,
                                                  v_flows, v_flow_id);
        v_counted := false;
    end if;
    %5$s
      into v_rows;
    if v_rows = 0 then
        return null;
    end if;
    if not v_counted then
        update pyflows_audit.events as e
           set deleted = jsonb_set(e.deleted, array[%4$L],
                                   to_jsonb(coalesce((e.deleted ->> %4$L)::bigint, 0) + v_rows))
         where e.id = v_event;
    end if;
    %6$s
    return null;
end;
$body$
$function$, v_function, v_tenant, v_flow, p_table,
                   replace(pyflows_audit._archive_statement(p_table, 'old_rows'), '$1', 'v_event'), v_queue);
    execute format('revoke all on function pyflows_audit.%I() from public', v_function);
    execute format('create or replace trigger audit_delete after delete on pyflows.%I
                        referencing old table as old_rows for each statement execute function pyflows_audit.%I()',
                   p_table, v_function);
end;
$make$;

revoke all on function pyflows_audit._archived_counts(bigint), pyflows_audit._create_delete_trigger(text) from public;

do $$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$$;

drop function pyflows_audit._on_delete();
