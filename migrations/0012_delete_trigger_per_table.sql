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
--   * the append-only guard compares the event's other columns as a row, not as jsonb;
--   * several flow.delete events may be open in one transaction (delete_flows deletes a batch with
--     one statement per table): the triggers then put each row under the event of its flow, and
--     _end_event closes every event the transaction opened. The setting pyflows.audit_open names the
--     ids the open events may have ('<first>:<last>'); the events themselves say whether they are open
--     (details.open_txid, written only by the owner's code), so a forged setting changes nothing.
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
set jit = off
as $$
begin
    return jsonb_strip_nulls(jsonb_build_object(
               'clients', (select sum(x.row_count) from pyflows_audit.clients_chunks as x where x.event_id = p_event),
               'engagements', (select sum(x.row_count) from pyflows_audit.engagements_chunks as x where x.event_id = p_event),
               'discovery_flows', (select sum(x.row_count) from pyflows_audit.discovery_flows_chunks as x where x.event_id = p_event),
               'data_imports', (select sum(x.row_count) from pyflows_audit.data_imports_chunks as x where x.event_id = p_event),
               'raw_import_records', (select sum(x.row_count) from pyflows_audit.raw_import_records_chunks as x where x.event_id = p_event),
               'import_field_mappings', (select sum(x.row_count) from pyflows_audit.import_field_mappings_chunks as x where x.event_id = p_event),
               'assets', (select sum(x.row_count) from pyflows_audit.assets_chunks as x where x.event_id = p_event),
               'asset_dependencies', (select sum(x.row_count) from pyflows_audit.asset_dependencies_chunks as x where x.event_id = p_event)));
end;
$$;

-- Close every event this transaction opened for rows: later deletes are audited on their own, whatever
-- the settings say. A flow.delete event's counts are what its chunks hold (_archived_counts).
create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    v_range text := current_setting('pyflows.audit_open', true);
    v_open  bigint[];
begin
    if v_range ~ '^[0-9]{1,18}:[0-9]{1,18}$' then
        select array_agg(e.id) into v_open from pyflows_audit.events as e
         where e.id between split_part(v_range, ':', 1)::bigint and split_part(v_range, ':', 2)::bigint
           and e.details ->> 'open_txid' = txid_current()::text;
    end if;
    if v_open is not null then
        update pyflows_audit.events as e
           set details = e.details - 'open_txid',
               deleted = case when e.action = 'flow.delete' then pyflows_audit._archived_counts(e.id) else e.deleted end
         where e.id = any(v_open);
    end if;
    perform set_config('pyflows.audit_open', '', true);
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
    perform set_config('pyflows.audit_open', p_event::text || ':' || p_event::text, true);
end;
$$;

-- Open events for an API action in the current tenant context, one per flow of p_flow_ids (in that
-- order, with the impact and snapshot at the same position): _begin_event for a batch. Their ids
-- follow the order of the flows.
create function pyflows_audit._begin_events(p_action text, p_flow_ids uuid[], p_reason text, p_impacts jsonb[],
                                            p_snapshots jsonb[], p_forced boolean default false,
                                            p_details jsonb default '{}')
returns bigint[]
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_ids bigint[];
begin
    with opened as (
        insert into pyflows_audit.events
            (action, actor, client_id, engagement_id, flow_id, batch_id, reason, forced, impact, flow_snapshot,
             statement, details)
        select p_action, pyflows.current_actor(), pyflows.current_client_id(), pyflows.current_engagement_id(),
               f.flow_id, nullif(current_setting('pyflows.audit_batch', true), '')::uuid, p_reason, p_forced,
               f.impact, f.snapshot, current_query(),
               coalesce(p_details, '{}')
                 || case when p_action = 'flow.delete' then jsonb_build_object('open_txid', txid_current()::text)
                         else '{}'::jsonb end
          from unnest(p_flow_ids, p_impacts, p_snapshots) with ordinality as f(flow_id, impact, snapshot, n)
         order by f.n
        returning id)
    select array_agg(opened.id order by opened.id) into v_ids from opened;
    if p_action = 'flow.delete' then
        perform set_config('pyflows.audit_open', v_ids[1]::text || ':' || v_ids[cardinality(v_ids)]::text, true);
    end if;
    perform set_config('pyflows.audit_event', '', true);
    return v_ids;
end;
$$;

-- Open an event for an API action in the current tenant context (see _begin_events). A flow.delete
-- event is open for rows at once (details.open_txid: the delete triggers archive under it only in this
-- transaction, until _end_event closes it); a purge event is opened by each batch (_open_event); other
-- actions never receive rows. Only the SECURITY DEFINER API functions call it.
create or replace function pyflows_audit._begin_event(p_action text, p_flow_id uuid, p_reason text, p_impact jsonb,
                                                      p_snapshot jsonb, p_forced boolean default false,
                                                      p_details jsonb default '{}')
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    return (pyflows_audit._begin_events(p_action, array[p_flow_id], p_reason, array[p_impact], array[p_snapshot],
                                        p_forced, p_details))[1];
end;
$$;

-- The statement that archives rows under their events and returns how many it archived: p_rows is a
-- query of (event id, the row as pyflows_audit.<p_table>_row, its id); p_events 'one' when every row
-- has the same event, 'many' otherwise. Chunks as migration 0009 made them, per event: tables with a bigint id by blocks of
-- 10,000 ids, a row over 16 kB alone; the others by about 8 MB of rows.
create function pyflows_audit._chunk_statement(p_table text, p_rows text, p_events text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'with chunk as (
             insert into pyflows_audit.%1$I (event_id, row_count, rows)
             select s.ev, count(*), array_agg(s.r) from (%2$s) as s group by s.ev, s.big, s.n
             returning row_count)
         select coalesce(sum(chunk.row_count), 0) from chunk',
        p_table || '_chunks',
        case when exists (select from pg_catalog.pg_attribute as a
                           where a.attrelid = pg_catalog.to_regclass('pyflows.' || quote_ident(p_table))
                             and a.attname = 'id' and a.atttypid = 'bigint'::regtype)
             then format('select t.ev, t.r, pg_catalog.pg_column_size(t.r) > 16384 as big,
                                 case when pg_catalog.pg_column_size(t.r) > 16384 then t.id else t.id / 10000 end as n
                            from (%s offset 0) as t(ev, r, id)', p_rows)
             else format('select t.ev, t.r, false as big,
                                 sum(pg_catalog.pg_column_size(t.r)) over (%s rows unbounded preceding)
                                   / 8388608 as n
                            from (%s) as t(ev, r, id)',
                         case when p_events = 'many' then 'partition by t.ev' else '' end, p_rows)
        end)
$$;

-- Migration 0009's statement that archives the rows of p_source (a relation or a parenthesized query
-- with the columns of pyflows.<p_table>) under the event $1: now _chunk_statement's, with one event.
create or replace function pyflows_audit._archive_statement(p_table text, p_source text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select pyflows_audit._chunk_statement(
        p_table, format('select $1::bigint, row(o.*)::pyflows_audit.%I, o.id from %s as o', p_table || '_row', p_source),
        'one')
$$;

-- PF423 for a deleted row that belongs to none of the flows a batch is deleting: another transaction
-- wrote it while the batch ran (an edge to one of the batch's assets). Nothing is deleted.
create function pyflows_audit._unowned_row(p_table text)
returns bigint
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    raise exception 'a row of % was written while its flow was being deleted', p_table
        using errcode = 'PF423', hint = 'Another transaction wrote it; nothing was deleted. Try again.';
end;
$$;

-- (Re)create pyflows_audit._on_delete_<p_table>() and the table's audit_delete trigger.
--
-- AFTER DELETE ... FOR EACH STATEMENT: write the deleted rows into the archive (chunks under their
-- event, see _chunk_statement), count them on the event unless it is a flow.delete (counted when it
-- closes), and for imports queue their stored files under the same event. The event is the API's
-- open event; when a batch has several open, each row's flow decides (a dependency edge goes under
-- the first of the batch's flows it touches: its own, its source asset's, its target asset's, which
-- delete_flows leaves in place until the edges are gone, as it leaves the imports until their rows
-- are); with none open, the statement's sql.delete event (found or opened by _statement_event after
-- one pass over the rows). The chunks are built by hash aggregation in memory (work_mem 64MB, times
-- hash_mem_multiplier), spilling to disk past it; sorting is off (see migration 0009), and so is JIT:
-- the cost a disabled sort adds would otherwise make every firing compile its plan (0.3 s).
create function pyflows_audit._create_delete_trigger(p_table text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $make$
declare
    v_function text := '_on_delete_' || p_table;
    v_row      text := format('row(o.*)::pyflows_audit.%I', p_table || '_row');
    v_tenant   text := case p_table when 'clients' then 't.id, null::uuid'
                                    when 'engagements' then 't.client_id, t.id'
                                    else 't.client_id, t.engagement_id' end;
    v_flow     text := case p_table when 'discovery_flows' then 't.id'
                                    when 'data_imports' then 't.flow_id'
                                    when 'assets' then 't.flow_id'
                                    when 'asset_dependencies' then 't.flow_id'
                                    else 'null::uuid' end;
    -- The batch event of each row: its flow's, through the live parent where the row does not name it.
    v_owner    text;
    v_queue    text := case when p_table = 'data_imports' then
        'insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id, event_id)
    select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id, coalesce(m.event_id, v_event)
      from old_rows as o left join unnest(v_flows, v_events) as m(flow_id, event_id) on v_event is null
                                                                                     and m.flow_id = o.flow_id;'
        else '' end;
begin
    if p_table is null or pg_catalog.to_regclass('pyflows_audit.' || quote_ident(p_table || '_chunks')) is null then
        raise exception 'no archive for table %', p_table using errcode = 'PF422';
    end if;
    -- Every audited table has an id; _chunk_statement uses it where it is a bigint.
    v_owner := case p_table
        when 'discovery_flows' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.id'
        when 'data_imports' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id'
        when 'assets' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id'
        when 'raw_import_records' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join pyflows.data_imports as i
                 on i.id = o.import_id and i.client_id = o.client_id and i.engagement_id = o.engagement_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id'
        when 'import_field_mappings' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join pyflows.data_imports as i
                 on i.id = o.import_id and i.client_id = o.client_id and i.engagement_id = o.engagement_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id'
        when 'asset_dependencies' then
            'select least(m.event_id, ms.event_id, mt.event_id), %1$s, o.id from old_rows as o
               left join pyflows.assets as s
                 on s.id = o.source_asset_id and s.client_id = o.client_id and s.engagement_id = o.engagement_id
               left join pyflows.assets as t
                 on t.id = o.target_asset_id and t.client_id = o.client_id and t.engagement_id = o.engagement_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
               left join unnest(v_flows, v_events) as ms(flow_id, event_id) on ms.flow_id = s.flow_id
               left join unnest(v_flows, v_events) as mt(flow_id, event_id) on mt.flow_id = t.flow_id'
        else  -- clients and engagements are never part of a flow's batch
            'select null::bigint, %1$s, o.id from old_rows as o'
        end;
    execute format($function$
create or replace function pyflows_audit.%1$I()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set enable_sort = off
set jit = off
set work_mem = '64MB'
as $body$
declare
    v_open       text := current_setting('pyflows.audit_open', true);
    v_events     bigint[];
    v_flows      uuid[];
    v_event      bigint;
    v_counted    boolean;
    v_rows       bigint;
    v_clients    bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flow_count bigint;
    v_flow_id    uuid;
begin
    -- The API events open for rows in this transaction: the setting says where to look, the events
    -- whether they are open (only the owner's code opens and closes them).
    if v_open ~ '^[0-9]{1,18}:[0-9]{1,18}$' then
        select array_agg(e.id), array_agg(e.flow_id), bool_and(e.action = 'flow.delete')  -- in the same order
          into v_events, v_flows, v_counted
          from pyflows_audit.events as e
         where e.id between split_part(v_open, ':', 1)::bigint and split_part(v_open, ':', 2)::bigint
           and e.details ->> 'open_txid' = txid_current()::text;
    end if;
    if v_events is null then
        select count(*), count(distinct t.c), count(distinct (t.c, t.e)), min(t.c::text)::uuid,
               min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
          into v_rows, v_clients, v_tenants, v_client, v_engagement, v_flow_count, v_flow_id
          from (select %2$s, %3$s from old_rows as t) as t(c, e, f);
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(%4$L, v_clients, v_tenants, v_client, v_engagement,
                                                  v_flow_count, v_flow_id);
        v_counted := false;
    elsif cardinality(v_events) = 1 then
        v_event := v_events[1];
    elsif not v_counted then
        raise exception 'several audit events are open and not all of them are flow deletes: %%', v_events
            using errcode = 'XX000';
    end if;
    if v_event is not null then
        %5$s
          into v_rows;
    else
        %6$s
          into v_rows;
    end if;
    if v_rows = 0 then
        return null;
    end if;
    if not v_counted then
        update pyflows_audit.events as e
           set deleted = jsonb_set(e.deleted, array[%4$L],
                                   to_jsonb(coalesce((e.deleted ->> %4$L)::bigint, 0) + v_rows))
         where e.id = v_event;
    end if;
    %7$s
    return null;
end;
$body$
$function$, v_function, v_tenant, v_flow, p_table,
        pyflows_audit._chunk_statement(p_table, format('select v_event, %s, o.id from old_rows as o', v_row), 'one'),
        pyflows_audit._chunk_statement(p_table, format(
            'select coalesce(x.ev, pyflows_audit._unowned_row(%L)), x.r, x.id from (%s) as x(ev, r, id)',
            p_table, format(v_owner, v_row)), 'many'),
        v_queue);
    execute format('revoke all on function pyflows_audit.%I() from public', v_function);
    execute format('create or replace trigger audit_delete after delete on pyflows.%I
                        referencing old table as old_rows for each statement execute function pyflows_audit.%I()',
                   p_table, v_function);
end;
$make$;

revoke all on function pyflows_audit._chunk_statement(text, text, text), pyflows_audit._unowned_row(text),
    pyflows_audit._archived_counts(bigint),
    pyflows_audit._begin_events(text, uuid[], text, jsonb[], jsonb[], boolean, jsonb),
    pyflows_audit._create_delete_trigger(text) from public;

do $$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$$;

drop function pyflows_audit._on_delete();
drop function pyflows_audit._own_event();  -- the triggers find their events themselves
