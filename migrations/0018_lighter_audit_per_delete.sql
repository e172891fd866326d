-- pyflows 0018: less work in the audit for each small delete.
--
-- Counted in instructions (valgrind, docs/benchmarks.md), the delete triggers and the events' own
-- bookkeeping were most of what a small flow's delete_flow costs beyond the bare DELETE. What
-- changes, none of it in what is archived or recorded:
--   * the guard on audit events compares the old and new rows with their two writable columns
--     copied across, instead of turning both rows into JSON (4 % of a small delete_flow);
--   * each delete trigger checks the open-events setting with string functions instead of a
--     regular expression, reads a single open event (delete_flow, a purge step) by its key without
--     aggregating, names the transaction without calling _xact() where Citus is not loaded, and
--     plans each of its statements once (plan_cache_mode: the custom plans it made again at every
--     call, for the client's value, were the plans the generic one is), and queues a deleted import's
--     file with a plain scan when all rows go under one event;
--   * the delete functions close the events they opened by their ids (_close_events), without
--     looking them up again as _end_event does;
--   * _xact() looks for Citus' settings before it looks for Citus' function in the catalog;
--   * counting what a flow.delete archived no longer reads the archives of clients and engagements.
-- The trigger generator below is migration 0017's with those steps changed, and every trigger
-- function is made again.
-- depends: 0017_clients_without_sorting

-- txid_current() on PostgreSQL; on Citus (initiator node << 48) + the distributed transaction number
-- (migration 0015).
create or replace function pyflows_audit._xact()
returns bigint
language plpgsql
volatile
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    c_current text;
    v_node    bigint;
    v_number  bigint;
begin
    -- Citus' settings exist only where Citus is loaded: without them, no catalog lookup (which cost a
    -- small delete_flow about 5 %: every delete trigger and the event functions call this).
    if pg_catalog.current_setting('citus.propagate_set_commands', true) is null
       or pg_catalog.to_regproc('pg_catalog.get_current_transaction_id') is null then
        return pg_catalog.txid_current();
    end if;
    -- Named through format(), so that no static check looks for them on PostgreSQL.
    c_current := pg_catalog.format('select t.initiator_node_identifier, t.transaction_number from %s() as t',
                                   'pg_catalog.get_current_transaction_id');
    execute c_current into v_node, v_number;
    if v_number = 0 then
        -- Citus starts a distributed transaction to propagate a LOCK of one of its tables: the
        -- least a transaction can do to get its number (a read may stay on this node). NOWAIT: only
        -- DDL on phases (a migration) holds a lock that conflicts, and nothing waits for it.
        begin
            lock table pyflows.phases in access share mode nowait;
        exception when lock_not_available then
            raise exception 'pyflows'' tables are being changed (a migration runs): try again'
                using errcode = 'PF423', hint = 'Try again once the migration has committed.';
        end;
        execute c_current into v_node, v_number;
    end if;
    if v_number = 0 then
        -- No distributed transaction: pyflows' tables are not distributed yet, and all is on this node.
        execute pg_catalog.format('select count(*) from %s as p where p.logicalrelid = $1',
                                  'pg_catalog.pg_dist_partition')
           into v_number using 'pyflows.phases'::regclass;  -- 1 when phases is Citus'
        if v_number = 1 then
            raise exception 'no Citus distributed transaction number for this transaction'
                using errcode = 'XX000';
        end if;
        return pg_catalog.txid_current();
    end if;
    return (v_node << 48) + v_number;
end;
$$;

-- Only deleted and details may change, and only in the transaction that wrote the event (or while
-- its purge runs): the new row with those two columns put back must be the old row.
create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_kept record;
begin
    v_kept := new;
    v_kept.deleted := old.deleted;
    v_kept.details := old.details;
    if v_kept is distinct from old
       or (old.txid <> pyflows_audit._xact()
           and not (old.action = 'flow.purge' and old.details ->> 'state' = 'running')) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;


-- ---- closing events --------------------------------------------------------------------------------

-- What each of the events p_events of p_client archived, per table: {"<event id>": {"assets": 5, ...}},
-- tables with no rows left out. Only a flow.delete event's counts are read from the archive
-- (_close_events: a purge's triggers count their own), and deleting flows archives no client and no
-- engagement: the archives of those two, which this query read too, are left out. For one event (a
-- delete_flow) a sum a table, with nothing to group. One query, on Citus routed to the client's
-- shards; on PostgreSQL one generic plan, kept (as migration 0016 made it).
create or replace function pyflows_audit._archived_counts(p_client uuid, p_events bigint[])
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    v_counts jsonb;
begin
    if cardinality(p_events) = 1 then  -- one event (delete_flow): a sum a table, nothing to group
        select jsonb_strip_nulls(jsonb_build_object(
                   'discovery_flows', (select sum(x.row_count) from pyflows_audit.discovery_flows_chunks as x
                            where x.client_id = p_client and x.event_id = p_events[1]),
                   'data_imports', (select sum(x.row_count) from pyflows_audit.data_imports_chunks as x
                            where x.client_id = p_client and x.event_id = p_events[1]),
                   'raw_import_records', (select sum(x.row_count) from pyflows_audit.raw_import_records_chunks as x
                            where x.client_id = p_client and x.event_id = p_events[1]),
                   'import_field_mappings', (select sum(x.row_count) from pyflows_audit.import_field_mappings_chunks as x
                            where x.client_id = p_client and x.event_id = p_events[1]),
                   'assets', (select sum(x.row_count) from pyflows_audit.assets_chunks as x
                            where x.client_id = p_client and x.event_id = p_events[1]),
                   'asset_dependencies', (select sum(x.row_count) from pyflows_audit.asset_dependencies_chunks as x
                            where x.client_id = p_client and x.event_id = p_events[1])))
          into v_counts;
        return case when v_counts = '{}' then '{}'::jsonb
                    else jsonb_build_object(p_events[1]::text, v_counts) end;
    end if;
    select coalesce(jsonb_object_agg(u.event_id::text, u.counts), '{}') into v_counts
      from (select s.event_id, jsonb_object_agg(s.table_name, s.n) as counts
              from (select 'discovery_flows', x.event_id, sum(x.row_count) from pyflows_audit.discovery_flows_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'data_imports', x.event_id, sum(x.row_count) from pyflows_audit.data_imports_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'raw_import_records', x.event_id, sum(x.row_count) from pyflows_audit.raw_import_records_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'import_field_mappings', x.event_id, sum(x.row_count) from pyflows_audit.import_field_mappings_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'assets', x.event_id, sum(x.row_count) from pyflows_audit.assets_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'asset_dependencies', x.event_id, sum(x.row_count) from pyflows_audit.asset_dependencies_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id) as s(table_name, event_id, n)
             group by s.event_id) as u;
    return v_counts;
end;
$$;

do $$
begin
    if not exists (select from pg_catalog.pg_extension where extname = 'citus') then
        alter function pyflows_audit._archived_counts(uuid, bigint[]) set plan_cache_mode = force_generic_plan;
    end if;
end;
$$;

-- Close the events p_events of the context's client, opened by this transaction for rows: a
-- flow.delete gets the counts of what the delete triggers archived under it, and every one loses its
-- open mark. Returns those counts ({"<event id>": {"assets": 5, ...}}). Called by the SECURITY DEFINER
-- delete functions with the events they opened, which need not look them up again, and by _end_event.
create function pyflows_audit._close_events(p_events bigint[])
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    c_client constant uuid := pyflows.current_client_id();
    v_counts jsonb := '{}';
begin
    if p_events is not null and c_client is not null then
        v_counts := pyflows_audit._archived_counts(c_client, p_events);
        update pyflows_audit.events as e
           set details = e.details - 'open_txid',
               deleted = case when e.action = 'flow.delete' then coalesce(v_counts -> e.id::text, '{}')
                              else e.deleted end
         where e.client_id = c_client and e.id = any(p_events);
    end if;
    perform pyflows._set_local('pyflows.audit_open', '');
    return v_counts;
end;
$$;

revoke all on function pyflows_audit._close_events(bigint[]) from public;

-- Close every event of the context's client this transaction opened for rows (see migration 0012).
create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    c_client constant uuid := pyflows.current_client_id();
    v_range  text := current_setting('pyflows.audit_open', true);
    v_open   bigint[];
begin
    if translate(v_range, '0123456789', '') = ':'  -- '<first>:<last>', as the delete triggers check it
       and length(split_part(v_range, ':', 1)) between 1 and 18
       and length(split_part(v_range, ':', 2)) between 1 and 18 and c_client is not null then
        select array_agg(e.id) into v_open from pyflows_audit.events as e
         where e.client_id = c_client
           and e.id between split_part(v_range, ':', 1)::bigint and split_part(v_range, ':', 2)::bigint
           and e.details ->> 'open_txid' = pyflows_audit._xact()::text;
    end if;
    perform pyflows_audit._close_events(v_open);
end;
$$;

-- (Re)create pyflows_audit._on_delete_<p_table>() and the table's audit_delete trigger.
--
-- AFTER DELETE ... FOR EACH STATEMENT, for each client whose rows the statement deleted: write the
-- rows into the archive (chunks under their event, see _chunk_query), count them on the event unless
-- it is a flow.delete (counted when it closes), and for imports queue their stored files under the
-- same event. The event is the client's API event open in this transaction; when a batch has several
-- open, each row's flow decides (a dependency edge goes under the first of the batch's flows it
-- touches: its own, its source asset's, its target asset's; the parents' flows are read first, by
-- the client's key); with none open, the statement's sql.delete event of that client
-- (_statement_event). The transition table is read on its own, never joined with a table, and every
-- write is a one-row INSERT or an UPDATE by the client's key: what a trigger on a Citus shard may do.
-- On a Citus shard the chunks go straight into the co-located shard of the archive (_chunk_insert).
create or replace function pyflows_audit._create_delete_trigger(p_table text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $make$
declare
    v_function text := '_on_delete_' || p_table;
    v_row      text := format('row(o.*)::pyflows_audit.%I', p_table || '_row');
    v_key      text := case p_table when 'clients' then 'id' else 'client_id' end;
    v_tenant   text := case p_table when 'clients' then 't.id, null::uuid'
                                    when 'engagements' then 't.client_id, t.id'
                                    else 't.client_id, t.engagement_id' end;
    v_flow     text := case p_table when 'discovery_flows' then 't.id'
                                    when 'data_imports' then 't.flow_id'
                                    when 'assets' then 't.flow_id'
                                    when 'asset_dependencies' then 't.flow_id'
                                    else 'null::uuid' end;
    -- Where a row does not name its flow, its parents' flows, read per client before the rows.
    v_parents  text := case p_table
        when 'raw_import_records' then
            'select array_agg(i.id), array_agg(i.flow_id) into v_parent_ids, v_parent_flows
               from pyflows.data_imports as i
              where i.client_id = v_client and i.engagement_id = v_engagement and i.flow_id = any (v_flows);'
        when 'import_field_mappings' then
            'select array_agg(i.id), array_agg(i.flow_id) into v_parent_ids, v_parent_flows
               from pyflows.data_imports as i
              where i.client_id = v_client and i.engagement_id = v_engagement and i.flow_id = any (v_flows);'
        when 'asset_dependencies' then
            'select array_agg(a.id), array_agg(a.flow_id) into v_parent_ids, v_parent_flows
               from pyflows.assets as a
              where a.client_id = v_client and a.engagement_id = v_engagement and a.flow_id = any (v_flows);'
        else '' end;
    v_owner    text;
    v_holds    text := case when p_table = 'clients' then
        'if not pyflows_audit._holds_client(v_client) then
            continue;  -- a reference table on Citus: this node does not hold the client
        end if;'
        else '' end;
    -- The files in the order the rows were deleted: one event, a plain scan; several, each row's
    -- flow's (a join, whose kept generic plan may take the rows in another order).
    v_queue    text := case when p_table = 'data_imports' then
        'if v_event is not null then
            for v_file in
                select o.engagement_id, o.storage_uri, o.flow_id, o.id, v_event as event_id
                  from old_rows as o where o.client_id = v_client
            loop
                insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id,
                                                        event_id)
                values (v_client, v_file.engagement_id, v_file.storage_uri, v_file.flow_id, v_file.id, v_file.event_id);
            end loop;
        else
            for v_file in
                select o.engagement_id, o.storage_uri, o.flow_id, o.id, m.event_id
                  from old_rows as o left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
                 where o.client_id = v_client
            loop
                insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id,
                                                        event_id)
                values (v_client, v_file.engagement_id, v_file.storage_uri, v_file.flow_id, v_file.id, v_file.event_id);
            end loop;
        end if;'
        else '' end;
begin
    if p_table is null or pg_catalog.to_regclass('pyflows_audit.' || quote_ident(p_table || '_chunks')) is null then
        raise exception 'no archive for table %', p_table using errcode = 'PF422';
    end if;
    v_owner := case p_table
        when 'discovery_flows' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.id
              where o.client_id = v_client'
        when 'data_imports' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
              where o.client_id = v_client'
        when 'assets' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
              where o.client_id = v_client'
        when 'raw_import_records' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_parent_ids, v_parent_flows) as i(id, flow_id) on i.id = o.import_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id
              where o.client_id = v_client'
        when 'import_field_mappings' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_parent_ids, v_parent_flows) as i(id, flow_id) on i.id = o.import_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id
              where o.client_id = v_client'
        when 'asset_dependencies' then
            'select least(m.event_id, ms.event_id, mt.event_id), %1$s, o.id from old_rows as o
               left join unnest(v_parent_ids, v_parent_flows) as s(id, flow_id) on s.id = o.source_asset_id
               left join unnest(v_parent_ids, v_parent_flows) as t(id, flow_id) on t.id = o.target_asset_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
               left join unnest(v_flows, v_events) as ms(flow_id, event_id) on ms.flow_id = s.flow_id
               left join unnest(v_flows, v_events) as mt(flow_id, event_id) on mt.flow_id = t.flow_id
              where o.client_id = v_client'
        else  -- clients and engagements are never part of a flow's batch
            'select null::bigint, %1$s, o.id from old_rows as o where o.' || v_key || ' = v_client'
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
set plan_cache_mode = force_generic_plan
as $body$
declare
    v_open         text := current_setting('pyflows.audit_open', true);
    v_xact         text;
    v_clients      uuid[];
    v_client       uuid;
    v_events       bigint[];
    v_first        bigint;
    v_last         bigint;
    v_flows        uuid[];
    v_event        bigint;
    v_counted      boolean;
    v_rows         bigint;
    v_tenants      bigint;
    v_engagement   uuid;
    v_flow_count   bigint;
    v_flow_id      uuid;
    v_parent_ids   %12$s[];
    v_parent_flows uuid[];
    v_chunk_event  bigint;
    v_chunk_count  bigint;
    v_chunk        pyflows_audit.%8$I[];
    v_file         record;
    v_insert       text;
begin
    -- The clients whose rows the statement deleted; one in every API delete, found without sorting
    -- the rows (array_agg(distinct) sorted every row of a large flow's tables, a fortieth of its delete).
    select t.c into v_client from (select %2$s from old_rows as t limit 1) as t(c, e);
    if v_client is null then
        return null;
    end if;
    if exists (select from (select %2$s from old_rows as t) as t(c, e) where t.c <> v_client) then
        select array_agg(distinct t.c) into v_clients from (select %2$s from old_rows as t) as t(c, e);
    else
        v_clients := array[v_client];
    end if;
    -- The setting names the range of event ids to look in ('<first>:<last>', digits of at most 18).
    -- Checked without a regular expression: a small delete checks it in every trigger.
    if translate(v_open, '0123456789', '') = ':'
       and length(split_part(v_open, ':', 1)) between 1 and 18
       and length(split_part(v_open, ':', 2)) between 1 and 18 then
        v_first := split_part(v_open, ':', 1)::bigint;
        v_last := split_part(v_open, ':', 2)::bigint;
        -- _xact()'s first step, without the call (a function that sets search_path costs one).
        v_xact := case when pg_catalog.current_setting('citus.propagate_set_commands', true) is null
                       then pg_catalog.txid_current() else pyflows_audit._xact() end::text;
    end if;
    foreach v_client in array v_clients loop
        %9$s
        -- The client's API events open for rows in this transaction: the setting says where to look,
        -- the events whether they are open (only the owner's code opens and closes them).
        v_events := null;
        v_event := null;
        if v_first = v_last then  -- one event (delete_flow, a purge step): read by its key
            select array[e.id], array[e.flow_id], e.action = 'flow.delete', e.engagement_id
              into v_events, v_flows, v_counted, v_engagement
              from pyflows_audit.events as e
             where e.client_id = v_client and e.id = v_first and e.details ->> 'open_txid' = v_xact;
        elsif v_first < v_last then
            select array_agg(e.id), array_agg(e.flow_id), bool_and(e.action = 'flow.delete'),  -- in the same order
                   min(e.engagement_id::text)::uuid
              into v_events, v_flows, v_counted, v_engagement
              from pyflows_audit.events as e
             where e.client_id = v_client and e.id between v_first and v_last
               and e.details ->> 'open_txid' = v_xact;
        end if;
        if v_events is null then
            select count(distinct t.e), min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
              into v_tenants, v_engagement, v_flow_count, v_flow_id
              from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
             where t.c = v_client;
            v_event := pyflows_audit._statement_event(%4$L, v_client, v_tenants, v_engagement, v_flow_count, v_flow_id);
            v_counted := false;
        elsif cardinality(v_events) = 1 then
            v_event := v_events[1];
        elsif not v_counted then
            raise exception 'several audit events are open and not all of them are flow deletes: %%', v_events
                using errcode = 'XX000';
        end if;
        v_rows := 0;
        v_insert := null;
        if tg_relid <> 'pyflows.%4$I'::regclass then
            v_insert := pyflows_audit._chunk_insert(%4$L, v_client);  -- on a Citus shard
        end if;
        if v_event is not null then
            for v_chunk_event, v_chunk_count, v_chunk in %5$s loop
                if v_insert is null then
                    insert into pyflows_audit.%10$I (client_id, event_id, row_count, rows)
                    values (v_client, v_chunk_event, v_chunk_count, v_chunk);
                else
                    execute v_insert using v_client, v_chunk_event, v_chunk_count, v_chunk;
                end if;
                v_rows := v_rows + v_chunk_count;
            end loop;
        else
            %7$s
            for v_chunk_event, v_chunk_count, v_chunk in %6$s loop
                if v_insert is null then
                    insert into pyflows_audit.%10$I (client_id, event_id, row_count, rows)
                    values (v_client, v_chunk_event, v_chunk_count, v_chunk);
                else
                    execute v_insert using v_client, v_chunk_event, v_chunk_count, v_chunk;
                end if;
                v_rows := v_rows + v_chunk_count;
            end loop;
        end if;
        if v_rows > 0 and not v_counted then
            update pyflows_audit.events as e
               set deleted = jsonb_set(e.deleted, array[%4$L],
                                       to_jsonb(coalesce((e.deleted ->> %4$L)::bigint, 0) + v_rows))
             where e.client_id = v_client and e.id = v_event;
        end if;
        %11$s
    end loop;
    return null;
end;
$body$
$function$, v_function, v_tenant, v_flow, p_table,
        pyflows_audit._chunk_query(
            p_table, format('select v_event, %s, o.id from old_rows as o where o.%I = v_client', v_row, v_key), 'one'),
        pyflows_audit._chunk_query(p_table, format(
            'select coalesce(x.ev, pyflows_audit._unowned_row(%L)), x.r, x.id from (%s) as x(ev, r, id)',
            p_table, format(v_owner, v_row)), 'many'),
        v_parents, p_table || '_row', v_holds, p_table || '_chunks', v_queue,
        -- the type of the parents' ids: assets' for the edges, imports' for records and mappings
        (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute as a
          where a.attrelid = case p_table when 'asset_dependencies' then 'pyflows.assets'::regclass
                                          else 'pyflows.data_imports'::regclass end
            and a.attname = 'id'));
    execute format('revoke all on function pyflows_audit.%I() from public', v_function);
    execute format('create or replace trigger audit_delete after delete on pyflows.%I
                        referencing old table as old_rows for each statement execute function pyflows_audit.%I()',
                   p_table, v_function);
end;
$make$;


do $$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$$;
