-- pyflows 0009: the archive stores deleted rows as compressed arrays, read through views of the same
-- names and columns.
--
-- Until now every deleted row was inserted once more, as a row of a typed archive table: about half
-- the cost of the unaudited cascade again (docs/benchmarks.md). Each archive table becomes
--   pyflows_audit.<table>_row     a composite type with the tenant table's columns (the archive's own
--                                 type, so the tenant table stays free to change);
--   pyflows_audit.<table>_chunks  one row per event and chunk of rows (see _archive_statement):
--                                 event_id, row_count, rows <table>_row[] (lz4 where the server
--                                 has it);
--   pyflows_audit.<table>         a view, event_id and the tenant table's columns, as before.
-- Readers keep reading pyflows_audit.<table> (a filter on event_id reads only that event's chunks);
-- the delete triggers write chunks; prune_audit deletes chunks. Existing archive rows are moved (in
-- chunks of about 8 MB per event).
-- A migration that changes a tenant table's columns changes its <table>_row type the same way
-- (ALTER TYPE ... ADD ATTRIBUTE keeps archived rows, read with NULL there) and recreates the view.
-- depends: 0008_refuse_truncate

do $$
declare
    v_table   text;
    v_columns text;
    v_names   text;
    v_lz4     boolean := exists (select from pg_catalog.pg_settings
                                  where name = 'default_toast_compression' and 'lz4' = any (enumvals));
begin
    foreach v_table in array array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                                   'import_field_mappings', 'assets', 'asset_dependencies'] loop
        select string_agg(format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)), ', '
                          order by a.attnum),
               string_agg(format('a.%I', a.attname), ', ' order by a.attnum)
          into v_columns, v_names
          from pg_catalog.pg_attribute as a
         where a.attrelid = format('pyflows_audit.%I', v_table)::regclass and a.attnum > 0 and not a.attisdropped
           and a.attname <> 'event_id';
        execute format('create type pyflows_audit.%I as (%s)', v_table || '_row', v_columns);
        execute format('create table pyflows_audit.%I (event_id bigint not null, row_count integer not null '
                       'check (row_count > 0), rows pyflows_audit.%I[] not null)', v_table || '_chunks',
                       v_table || '_row');
        if v_lz4 then
            execute format('alter table pyflows_audit.%I alter column rows set compression lz4', v_table || '_chunks');
        end if;
        execute format('create index %I on pyflows_audit.%I (event_id)', v_table || '_chunks_event',
                       v_table || '_chunks');
        execute format(
            'insert into pyflows_audit.%1$I (event_id, row_count, rows)
             select s.event_id, count(*), array_agg(s.r)
               from (select t.event_id, t.r,
                            sum(pg_catalog.pg_column_size(t.r)) over (partition by t.event_id rows unbounded preceding)
                              / 8388608 as chunk
                       from (select a.event_id, row(%3$s)::pyflows_audit.%2$I as r from pyflows_audit.%4$I as a) as t
                    ) as s
              group by s.event_id, s.chunk',
            v_table || '_chunks', v_table || '_row', v_names, v_table);
        execute format('drop table pyflows_audit.%I', v_table);
        execute format('create view pyflows_audit.%I as select c.event_id, r.* from pyflows_audit.%I as c '
                       'cross join lateral unnest(c.rows) as r', v_table, v_table || '_chunks');
        execute format('create trigger refuse_change before update or delete on pyflows_audit.%I '
                       'for each statement execute function pyflows_audit._refuse_change()', v_table || '_chunks');
        execute format('create trigger refuse_truncate before truncate on pyflows_audit.%I '
                       'for each statement execute function pyflows_audit._refuse_change()', v_table || '_chunks');
        execute format('create trigger refuse_change instead of insert or update or delete on pyflows_audit.%I '
                       'for each row execute function pyflows_audit._refuse_change()', v_table);
        execute format('revoke all on pyflows_audit.%I, pyflows_audit.%I from public', v_table, v_table || '_chunks');
        execute format('revoke all on type pyflows_audit.%I from public', v_table || '_row');
    end loop;
end;
$$;

-- The statement that archives the rows of p_source (a relation name or a parenthesized query with
-- the columns of pyflows.<p_table>) under the event $1 and returns how many rows it archived. The
-- delete triggers run it on their transition table. Chunks stay far below PostgreSQL's 1 GB limit on
-- one value: tables with a bigint id (the flows' bulk: raw records, mappings, assets, dependencies)
-- chunk by blocks of 10,000 ids, and a row larger than 16 kB goes into a chunk of its own, so a chunk
-- holds at most about 160 MB; the other tables chunk by about 8 MB of rows in the order they come.
create function pyflows_audit._archive_statement(p_table text, p_source text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit
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

revoke all on function pyflows_audit._archive_statement(text, text) from public;

-- The running purge that the settings name for the current statement (a purge batch binds its event
-- as the API does), with its tenant; no row when there is none. One index lookup.
create function pyflows_audit._running_purge(out id bigint, out client_id uuid, out engagement_id uuid)
returns setof record
language sql
stable
security definer
set search_path = pg_catalog, pyflows_audit
set enable_seqscan = off
as $$
    select e.id, e.client_id, e.engagement_id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and current_setting('pyflows.audit_statement', true) = 'api'
       and e.action = 'flow.purge' and e.details ->> 'state' = 'running'
$$;

revoke all on function pyflows_audit._running_purge() from public;

-- AFTER DELETE ... FOR EACH STATEMENT on every audited table: write the deleted rows into the archive
-- (chunks under the event, see _archive_statement) and add their number to the event's counts.
-- The chunks are built by hash aggregation in memory (work_mem 64MB, times hash_mem_multiplier),
-- spilling to disk past it. Sorting is off: the planner cannot know how few chunks there are, and
-- for a large delete it would sort every row on disk instead (three times slower at 500k rows).
create or replace function pyflows_audit._on_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
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
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flows      bigint;
    v_flow_id    uuid;
    v_event      bigint;
    v_foreign    boolean;
begin
    v_event := pyflows_audit._own_event();
    if v_event is null then
        -- A purge batch: its event was opened by an earlier transaction. The rows are its if every
        -- one belongs to the purge's tenant (one pass that stops at the first that does not).
        select p.id, p.client_id, p.engagement_id into v_event, v_client, v_engagement
          from pyflows_audit._running_purge() as p;
        if v_event is not null then
            execute format('select exists (select from old_rows where row(%s) is distinct from row($1, $2))',
                           v_tenant)
               into v_foreign
              using v_client, v_engagement;
            if v_foreign then
                v_event := null;
            end if;
        end if;
    end if;
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
    return null;
end;
$$;
