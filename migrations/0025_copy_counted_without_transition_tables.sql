-- pyflows 0025: a COPY into the partitions that take it (migrations 0021, 0022) is checked and counted
-- without a transition table.
--
-- The partitions' statement triggers read every row COPYed back from a transition table: to add each
-- import's rows to its record_count and to refuse rows of a flow being purged. Capturing the rows
-- (a million of them do not fit in work_mem: a temporary file) and reading them back took 9.8 % of a
-- server's time COPYing 300,000 raw records (perf; docs/benchmarks.md). Now a COPY (or INSERT)
-- into a partition takes the rows of one import (raw records) or one flow (assets), the one that
-- begin_copy_records or begin_copy_assets opened in the transaction (settings pyflows.copy_import,
-- pyflows.copy_flow):
--
-- - a BEFORE STATEMENT trigger refuses a statement without a context (PF401) or that no
--   begin_copy_* opened (PF422), and notes, for this statement only, the import or flow and how many
--   rows this transaction had inserted into the partition (pg_stat_get_xact_tuples_inserted);
-- - a CHECK constraint, <partition>_within_copy, refuses a row of another import or flow (PF422),
--   after the tenant CHECK (constraints are checked in the order of their names): it reads the noted
--   key once a statement, as the tenant CHECK reads the context (migration 0023). Rows routed
--   through the parent (add_records, a restore) find no key noted and pass, and are checked by the
--   parent's policies and triggers as before;
-- - the AFTER STATEMENT trigger refuses the rows of an import (flow) not in the context or of a flow
--   being purged (PF404), adds how many the statement inserted (the count now less the count noted)
--   to the import's record_count, and marks its flow active; with track_counts off (a superuser's
--   setting) it counts the import's rows instead.
--
-- A client that sets those settings itself chooses which of its own imports (flows) it COPYs into,
-- as begin_copy_* does, nothing more: the tenant CHECK and the foreign keys still hold every row to
-- the context, and the count is of the rows the statement inserted, whatever the key.
-- depends: 0024_archive_in_one_statement

-- The import or flow that the COPY being run was opened for (setting pyflows.copy_statement_key, which
-- _copy_statement_begin writes and _copy_statement_end clears), for the CHECK constraints
-- <partition>_within_copy alone: IMMUTABLE so that each statement reads it once (migration 0023 says
-- why that is right there and wrong anywhere else).
create function pyflows._statement_copy_key()
returns uuid
language sql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$ select nullif(pg_catalog.current_setting('pyflows.copy_statement_key', true), '')::uuid $$;

-- A row of another import (flow) than the one its COPY was opened for: PF422. Called by the CHECK
-- constraints <partition>_within_copy, as the inserting role.
create function pyflows._row_outside_copy(p_column text, p_value uuid)
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    -- The setting itself: a plan kept here would keep the value of the folding function's call.
    raise exception 'this COPY was opened for % %, and a row is of %', p_column,
        pg_catalog.current_setting('pyflows.copy_statement_key', true), p_value
        using errcode = 'PF422',
              detail = json_build_object('column', p_column, 'value', p_value, 'opened_for',
                                         pg_catalog.current_setting('pyflows.copy_statement_key', true))::text,
              hint = 'Call begin_copy_records (begin_copy_assets) for each import (flow), then COPY its rows.';
end;
$$;

-- BEFORE STATEMENT of a partition's INSERT or COPY. TG_ARGV: the setting begin_copy_* writes
-- (pyflows.copy_import, pyflows.copy_flow), and the function's name for the error.
create function pyflows._copy_statement_begin()
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
    return null;
end;
$$;

-- AFTER STATEMENT of a partition's INSERT or COPY (after _copy_statement_begin). TG_ARGV[0]: 'records'
-- (the key is an import, whose record_count counts the rows) or 'assets' (the key is a flow).
create function pyflows._copy_statement_end()
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
begin
    -- Statements routed through the parent find no key.
    perform pg_catalog.set_config('pyflows.copy_statement_key', '', true);
    if v_key is null then
        raise exception 'no COPY was opened for this statement' using errcode = 'PF422';
    end if;
    -- The import (flow) in the context: a superuser's COPY, which the tenant CHECK lets through, of rows
    -- outside it is refused here rather than left uncounted.
    if tg_argv[0] = 'records' then
        select i.flow_id into v_flow from pyflows.data_imports as i
         where i.client_id = c_client and i.engagement_id = c_engagement and i.id = v_key;
    else
        select f.id into v_flow from pyflows.discovery_flows as f
         where f.client_id = c_client and f.engagement_id = c_engagement and f.id = v_key;
    end if;
    if v_flow is null then
        raise exception '% % not found', case tg_argv[0] when 'records' then 'import' else 'flow' end, v_key
            using errcode = 'PF404', detail = json_build_object('id', v_key)::text;
    end if;
    perform pyflows._refuse_flow_being_purged(
        (select f.id from pyflows.discovery_flows as f
          where f.client_id = c_client and f.engagement_id = c_engagement and f.id = v_flow
            and f.status = 'deleting'));
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
    return null;
end;
$$;

revoke all on function pyflows._statement_copy_key(), pyflows._row_outside_copy(text, uuid),
    pyflows._copy_statement_begin(), pyflows._copy_statement_end() from public;
-- The CHECK constraints and the triggers run as the inserting role.
grant execute on function pyflows._statement_copy_key(), pyflows._row_outside_copy(text, uuid),
    pyflows._copy_statement_begin(), pyflows._copy_statement_end() to pyflows_app;

drop trigger copy_rules on pyflows.raw_import_records_default;
drop trigger copy_rules on pyflows.assets_default;
drop function pyflows._on_copy_raw_import_records();

alter table pyflows.raw_import_records_default add constraint raw_import_records_default_within_copy
    check (coalesce(nullif(coalesce(import_id = pyflows._statement_copy_key(), true), false),
                    pyflows._row_outside_copy('import_id', import_id))) not valid;
alter table pyflows.assets_default add constraint assets_default_within_copy
    check (coalesce(nullif(coalesce(flow_id = pyflows._statement_copy_key(), true), false),
                    pyflows._row_outside_copy('flow_id', flow_id))) not valid;

create trigger copy_opened before insert on pyflows.raw_import_records_default
    for each statement execute function pyflows._copy_statement_begin('pyflows.copy_import', 'begin_copy_records');
create trigger copy_rules after insert on pyflows.raw_import_records_default
    for each statement execute function pyflows._copy_statement_end('records');
create trigger copy_opened before insert on pyflows.assets_default
    for each statement execute function pyflows._copy_statement_begin('pyflows.copy_flow', 'begin_copy_assets');
create trigger copy_rules after insert on pyflows.assets_default
    for each statement execute function pyflows._copy_statement_end('assets');
