-- pyflows 0026: a COPY into the partitions (migration 0025) waits for locks at most pyflows.lock_timeout,
-- whoever opened it, and its AFTER STATEMENT trigger reads the import's (flow's) row once.
--
-- begin_copy_records and begin_copy_assets bound the transaction's lock waits for the COPY that follows
-- (_bound_lock_waits). A client that sets pyflows.copy_import (pyflows.copy_flow) itself and COPYs
-- without calling them got its session's own lock_timeout only, none by default: a COPY whose import
-- row another transaction held FOR UPDATE waited for it without end. Now the BEFORE STATEMENT trigger
-- bounds the statement's waits itself (the foreign keys' KEY SHARE locks, the AFTER STATEMENT update
-- of record_count) and the AFTER STATEMENT trigger puts the session's lock_timeout back: a wait that
-- runs out is 55P03 (the Python API's FlowBusy), as after begin_copy_*.
--
-- The AFTER STATEMENT trigger read the flow twice (to find it, then its status); one query now reads
-- the import's flow (or the flow) and its status together.
-- depends: 0025_copy_counted_without_transition_tables

-- BEFORE STATEMENT of a partition's INSERT or COPY. TG_ARGV: the setting begin_copy_* writes
-- (pyflows.copy_import, pyflows.copy_flow), and the function's name for the error.
create or replace function pyflows._copy_statement_begin()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_key text := pg_catalog.current_setting(tg_argv[0], true);
begin
    perform pyflows._require_context();
    if coalesce(v_key, '') !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
        raise exception '%.% takes rows only in the transaction of a % call, for its %', tg_table_schema,
            tg_table_name, tg_argv[1], case tg_argv[0] when 'pyflows.copy_import' then 'import' else 'flow' end
            using errcode = 'PF422',
                  hint = format('Call pyflows.%s first, in the same transaction, then COPY the rows it opened.',
                                tg_argv[1]);
    end if;
    perform pg_catalog.set_config('pyflows.copy_statement_key', v_key, true);
    perform pg_catalog.set_config('pyflows.copy_statement_inserted',
                                  pg_catalog.pg_stat_get_xact_tuples_inserted(tg_relid)::text, true);
    -- The statement's lock waits, bounded; _copy_statement_end puts the session's bound back.
    perform pg_catalog.set_config('pyflows.copy_statement_lock_timeout', pyflows._bound_lock_waits(), true);
    return null;
end;
$$;

-- AFTER STATEMENT of a partition's INSERT or COPY (after _copy_statement_begin). TG_ARGV[0]: 'records'
-- (the key is an import, whose record_count counts the rows) or 'assets' (the key is a flow).
create or replace function pyflows._copy_statement_end()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_key        uuid := nullif(pg_catalog.current_setting('pyflows.copy_statement_key', true), '');
    v_rows       bigint := pg_catalog.pg_stat_get_xact_tuples_inserted(tg_relid)
                           - pg_catalog.current_setting('pyflows.copy_statement_inserted')::bigint;
    v_flow       uuid;
    v_status     text;
begin
    -- Statements routed through the parent find no key.
    perform pg_catalog.set_config('pyflows.copy_statement_key', '', true);
    if v_key is null then
        raise exception 'no COPY was opened for this statement' using errcode = 'PF422';
    end if;
    -- The import (flow) in the context: a superuser's COPY, which the tenant CHECK lets through, of rows
    -- outside it is refused here rather than left uncounted.
    if tg_argv[0] = 'records' then
        select f.id, f.status into v_flow, v_status
          from pyflows.data_imports as i
          join pyflows.discovery_flows as f
            on f.client_id = i.client_id and f.engagement_id = i.engagement_id and f.id = i.flow_id
         where i.client_id = c_client and i.engagement_id = c_engagement and i.id = v_key;
    else
        select f.id, f.status into v_flow, v_status from pyflows.discovery_flows as f
         where f.client_id = c_client and f.engagement_id = c_engagement and f.id = v_key;
    end if;
    if v_flow is null then
        raise exception '% % not found', case tg_argv[0] when 'records' then 'import' else 'flow' end, v_key
            using errcode = 'PF404', detail = json_build_object('id', v_key)::text;
    end if;
    perform pyflows._refuse_flow_being_purged(case when v_status = 'deleting' then v_flow end);
    if tg_argv[0] = 'records' then
        if pg_catalog.current_setting('track_counts') = 'on' then
            update pyflows.data_imports as i set record_count = i.record_count + v_rows, updated_at = now()
             where i.client_id = c_client and i.engagement_id = c_engagement and i.id = v_key and v_rows > 0;
        else  -- the statistics count nothing: the import's rows, counted
            update pyflows.data_imports as i
               set record_count = (select count(*) from pyflows.raw_import_records as r
                                    where r.client_id = c_client and r.engagement_id = c_engagement
                                      and r.import_id = v_key),
                   updated_at = now()
             where i.client_id = c_client and i.engagement_id = c_engagement and i.id = v_key;
        end if;
        update pyflows.discovery_flows as f set last_activity_at = now()
         where f.client_id = c_client and f.engagement_id = c_engagement and f.id = v_flow and v_rows > 0;
    end if;
    perform pyflows._set_local('lock_timeout', pg_catalog.current_setting('pyflows.copy_statement_lock_timeout'));
    return null;
end;
$$;
