-- pyflows sql/080_bulk: loading a flow's rows in bulk, under row-level security.
--
-- PostgreSQL refuses COPY FROM into a table with row-level security, so a worker COPYs its rows into
-- a temporary staging table of its own session (no RLS there), then one of these functions moves them
-- with one INSERT ... SELECT, which the policies check like any insert. The functions run as the
-- caller (SECURITY INVOKER): they read only a relation the caller may read, write only what the
-- caller may write, in the caller's tenant context. Each locks the flow (NOWAIT), refuses a flow being
-- purged (PF404) or finished (PF422), turns a bad row into PF422 with nothing written, and waits for
-- rows other transactions hold (another flow's asset an edge points at) at most pyflows.lock_timeout,
-- then PF423.
--
-- Each INSERT ... SELECT has a RETURNING clause, counted: on Citus an INSERT ... SELECT from a local
-- table without one is executed as a COPY into the shards, which row-level security refuses too;
-- with one, Citus sends the rows to the workers as intermediate results and inserts them there with
-- plain INSERTs, which the policies check (docs/scale-out.md).
--
-- Or without a staging table: the add_* functions take a batch of rows as one JSON array (of values
-- for add_records, of objects with the staging tables' column names for the others), which a worker
-- sends as one parameter and can pipeline, a batch after another, in one transaction. Each batch is
-- the same INSERT ... SELECT as the load_* functions (one function per table does both), reading the
-- array with jsonb_array_elements or jsonb_to_recordset; an object with a key that names no column,
-- or an element that is not an object, is PF422 before anything is written.
--
-- The staging tables' columns (names as listed; any order; extra columns are ignored):
--   load_records       ord bigint, data jsonb
--   load_mappings      source_field text, target_attribute text, confidence numeric, status text
--   load_assets        ord bigint, name text, asset_type text, hostname text, ip_address inet,
--                      operating_system text, attributes jsonb
--   load_dependencies  source_asset_id bigint, target_asset_id bigint, dependency_type text

-- The staging relation p_stage names (a plain, optionally schema-qualified name such as
-- pg_temp.stage_assets), checked to have p_columns (name and type each); PF422 otherwise.
create or replace function pyflows._stage(p_stage text, p_columns text[])
returns regclass
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_stage   regclass;
    v_missing text;
begin
    if p_stage is null or p_stage !~ '^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$' then
        raise exception 'stage must name a table, such as pg_temp.stage_rows (got %)',
            coalesce(quote_literal(left(p_stage, 200)), 'NULL')
            using errcode = 'PF422';
    end if;
    v_stage := pg_catalog.to_regclass(p_stage);
    if v_stage is null then
        raise exception 'no staging table %', p_stage
            using errcode = 'PF422', hint = 'Create it (CREATE TEMP TABLE ... ON COMMIT DROP) and COPY the rows into it.';
    end if;
    select string_agg(c, ', ') into v_missing
      from unnest(p_columns) as c
     where not exists (select from pg_catalog.pg_attribute as a
                        where a.attrelid = v_stage and a.attnum > 0 and not a.attisdropped
                          and format('%s %s', a.attname, pg_catalog.format_type(a.atttypid, null)) = c);
    if v_missing is not null then
        raise exception 'staging table % lacks the columns %', v_stage, v_missing
            using errcode = 'PF422', detail = json_build_object('stage', v_stage::text, 'needs', p_columns)::text;
    end if;
    return v_stage;
end;
$$;

-- The batch p_rows of an add_* call, checked: a JSON array; with p_keys, of objects whose keys are
-- among p_keys. PF422 otherwise, naming what is wrong. (One pass that takes the known keys off each
-- object: a jsonpath over every key cost more than reading the batch.)
create or replace function pyflows._batch(p_rows jsonb, p_keys text[])
returns jsonb
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_bad jsonb;
begin
    if p_rows is null or pg_catalog.jsonb_typeof(p_rows) <> 'array' then
        raise exception 'rows must be a JSON array (got %)', coalesce(pg_catalog.jsonb_typeof(p_rows), 'NULL')
            using errcode = 'PF422';
    end if;
    if p_keys is not null then
        select e into v_bad from pg_catalog.jsonb_array_elements(p_rows) as e
         where case when pg_catalog.jsonb_typeof(e) = 'object' then e - p_keys <> '{}'::jsonb else true end
         limit 1;
        if pg_catalog.jsonb_typeof(v_bad) <> 'object' then
            raise exception 'each row must be a JSON object (got %)', left(v_bad::text, 200)
                using errcode = 'PF422', detail = json_build_object('keys', p_keys)::text;
        elsif v_bad is not null then
            raise exception 'a row has unknown keys: %',
                (select string_agg(k, ', ' order by k) from pg_catalog.jsonb_object_keys(v_bad - p_keys) as k)
                using errcode = 'PF422', detail = json_build_object('keys', p_keys)::text;
        end if;
    end if;
    return p_rows;
end;
$$;

-- What a load reads: with p_rows NULL, the staging table p_stage (checked by _stage, returned);
-- otherwise the JSON batch p_rows (checked by _batch; NULL returned). PF422 when both are given.
create or replace function pyflows._stage_or_batch(p_stage text, p_columns text[], p_rows jsonb, p_keys text[])
returns regclass
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if p_rows is null then
        return pyflows._stage(p_stage, p_columns);
    end if;
    if p_stage is not null then
        raise exception 'a load reads a staging table or a JSON batch, not both' using errcode = 'PF422';
    end if;
    perform pyflows._batch(p_rows, p_keys);
    return null;
end;
$$;

-- The context's incomplete flow, locked (NOWAIT); PF404 (missing, another tenant's, being purged),
-- PF422 (finished), PF423 (locked).
create or replace function pyflows._flow_for_loading(p_flow_id uuid)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_flow jsonb := pyflows._lock_flow(p_flow_id);
begin
    perform pyflows._require_status(v_flow, pyflows._incomplete_statuses(), 'rows are loaded into incomplete flows only',
                                    'Start a new flow for a new import.');
    return v_flow;
end;
$$;

-- The flow of the context's import p_import_id, locked for loading as _flow_for_loading; PF404 for an
-- import that is not the context's.
create or replace function pyflows._import_for_loading(p_import_id uuid)
returns uuid
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_flow_id uuid;
begin
    if p_import_id is null then
        raise exception 'import id must not be NULL' using errcode = 'PF422';
    end if;
    select i.flow_id into v_flow_id from pyflows.data_imports as i
     where i.client_id = pyflows.current_client_id() and i.engagement_id = pyflows.current_engagement_id()
       and i.id = p_import_id;
    if v_flow_id is null then
        raise exception 'import % not found', p_import_id
            using errcode = 'PF404', detail = json_build_object('import_id', p_import_id)::text;
    end if;
    perform pyflows._flow_for_loading(v_flow_id);
    return v_flow_id;
end;
$$;

-- PF422 for a constraint a loaded row broke: "<what>: <the constraint's message>". A violation found on
-- a Citus worker names no constraint and the shard's in its message: both say the table's constraint.
create or replace function pyflows._refuse_rows(p_what text, p_message text, p_constraint text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if coalesce(p_constraint, '') = '' and p_message ~ 'constraint "[a-z_]+_[0-9]+"' then
        p_message := regexp_replace(p_message, 'constraint "([a-z_]+)_[0-9]+"', 'constraint "\1"');
        p_constraint := substring(p_message from 'constraint "([a-z_]+)"');
    end if;
    raise exception '%: %', p_what, p_message
        using errcode = 'PF422', detail = json_build_object('constraint', p_constraint)::text,
              hint = 'Nothing was loaded; correct the rows and load them again.';
end;
$$;

-- The number of an import's last raw record (0 when it has none): the last entry of the records'
-- (import_id, client_id, engagement_id, row_number) key, read backwards. Not max(): on a table
-- without statistics (a new install, autovacuum off, rows loaded in one transaction) the planner
-- expects one row and aggregates all of the import's rows instead of taking the last one, which
-- made each batch of a large load read every row the batches before it had loaded (0.24 s a batch
-- at 1M rows).
create or replace function pyflows._last_row_number(p_import_id uuid)
returns integer
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_last       integer;
begin
    select r.row_number into v_last from pyflows.raw_import_records as r
     where r.client_id = c_client and r.engagement_id = c_engagement and r.import_id = p_import_id
     order by r.row_number desc
     limit 1;
    return coalesce(v_last, 0);
end;
$$;

-- The raw records of an import, from the staging table p_stage (ord, data; checked by _stage) or, when
-- it is NULL, the JSON array p_rows (checked by _batch), numbered after the import's last row in the
-- order of ord (of the array). Result: {import_id, flow_id, loaded, record_count}. The body of
-- load_records and add_records.
create or replace function pyflows._load_records(p_import_id uuid, p_stage text, p_rows jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow_id    uuid;
    v_last       integer;
    v_n          bigint;
    v_count      bigint;
    v_message    text;
    v_constraint text;
    v_stage      regclass;
    v_wait       text;
begin
    perform pyflows._require_context();
    v_flow_id := pyflows._import_for_loading(p_import_id);
    v_last := pyflows._last_row_number(p_import_id);
    v_stage := pyflows._stage_or_batch(p_stage, array['ord bigint', 'data jsonb'], p_rows, null);
    v_wait := pyflows._bound_lock_waits();
    begin
        execute format('with inserted as (
                            insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number,
                                                                    data)
                            select $1, $2, $3, $4 + s.n, s.data from %s
                            returning 1)
                        select count(*) from inserted',
                       case when v_stage is null
                            then 'pg_catalog.jsonb_array_elements($5) with ordinality as s(data, n)'
                            else format('(select row_number() over (order by t.ord) as n, t.data from %s as t) as s',
                                        v_stage) end)
          using c_client, c_engagement, p_import_id, v_last, p_rows
          into v_n;
    exception when not_null_violation or check_violation or unique_violation or data_exception then
        get stacked diagnostics v_message = message_text, v_constraint = constraint_name;
        perform pyflows._refuse_rows('raw records', v_message, v_constraint);
    when lock_not_available or deadlock_detected then
        perform pyflows._refuse_busy(v_flow_id, 'loaded', sqlerrm);
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    update pyflows.data_imports as i
       set record_count = i.record_count + v_n, updated_at = now()
     where i.client_id = c_client and i.engagement_id = c_engagement and i.id = p_import_id
    returning i.record_count into v_count;
    update pyflows.discovery_flows as f set last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = v_flow_id;
    return jsonb_build_object('import_id', p_import_id, 'flow_id', v_flow_id, 'loaded', v_n, 'record_count', v_count);
end;
$$;

-- The raw records of an import, from p_stage (ord, data), numbered after the import's last row in
-- the order of ord. Result: {import_id, flow_id, loaded, record_count}.
create or replace function pyflows.load_records(p_import_id uuid, p_stage text)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_records(p_import_id, p_stage, null);
end;
$$;

-- The raw records of an import from p_records, a JSON array of the records' data (any JSON values),
-- numbered after the import's last row in the array's order. Result: as load_records.
create or replace function pyflows.add_records(p_import_id uuid, p_records jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_records(p_import_id, null, coalesce(p_records, 'null'));
end;
$$;

-- Opens a COPY of an import's raw records, straight into pyflows.raw_import_records_default (the
-- partition that takes COPY, migration 0021): locks the import's flow for loading as load_records
-- does (PF401, PF404, PF422, PF423) and says what the rows need. Result: {import_id, flow_id,
-- client_id, engagement_id, next_row_number, record_count, copy_table}; the caller then, in the same
-- transaction, runs COPY <copy_table> (client_id, engagement_id, import_id, row_number, data) FROM
-- STDIN with the rows numbered from next_row_number, all of this import, and commits. The partition's
-- CHECK constraints check every row's tenant (PF401, PF403) and import (PF422); its statement triggers
-- refuse a COPY no begin_copy_records opened (PF422) and rows of a flow being deleted (PF404), and add
-- the rows to record_count (migration 0025).
-- copy_table is NULL where the caller may not COPY into the partition (on Citus): add_records then.
-- The transaction's lock waits are bounded by pyflows.lock_timeout from here on, so that the COPY
-- waits for rows another transaction holds (its import) at most that long: 55P03 then.
create or replace function pyflows.begin_copy_records(p_import_id uuid)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    c_table      text := 'pyflows.raw_import_records_default';
    v_flow_id    uuid;
    v_last       integer;
    v_count      bigint;
begin
    perform pyflows._require_context();
    v_flow_id := pyflows._import_for_loading(p_import_id);
    perform pyflows._bound_lock_waits();  -- for the COPY that follows, in this transaction
    v_last := pyflows._last_row_number(p_import_id);
    select i.record_count into v_count from pyflows.data_imports as i
     where i.client_id = c_client and i.engagement_id = c_engagement and i.id = p_import_id;
    if pg_catalog.has_table_privilege(c_table, 'INSERT') then
        -- The import the partition's COPY statements of this transaction take rows of (migration 0025).
        perform pg_catalog.set_config('pyflows.copy_import', p_import_id::text, true);
    else
        c_table := null;
    end if;
    return jsonb_build_object('import_id', p_import_id, 'flow_id', v_flow_id, 'client_id', c_client,
                              'engagement_id', c_engagement, 'next_row_number', v_last + 1,
                              'record_count', v_count, 'copy_table', c_table);
end;
$$;

-- The runs of consecutive ids in p_ids (each id once, NULLs ignored), as [first, last] pairs in
-- ascending order: how begin_copy_assets answers the ids it drew when they are not one run.
create or replace function pyflows._id_ranges(p_ids bigint[])
returns jsonb
language sql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select coalesce(jsonb_agg(jsonb_build_array(r.first, r.last) order by r.first), '[]')
      from (select min(i.id) as first, max(i.id) as last
              from (select d.id, d.id::numeric - row_number() over (order by d.id) as run
                      from (select distinct u.id from unnest(p_ids) as u(id) where u.id is not null) as d) as i
             group by i.run) as r
$$;

-- Opens a COPY of p_count assets of a flow, straight into pyflows.assets_default (the partition that
-- takes COPY, migration 0022): locks the flow for loading as load_assets does (PF401, PF404, PF422,
-- PF423), marks it active, and draws the assets' ids from their identity sequence, in order (p_count
-- from 0 to 1,000,000; PF422 otherwise). Result: {flow_id, client_id, engagement_id, id_ranges,
-- copy_table}, id_ranges the ids drawn as [first, last] pairs in order (one pair unless another
-- session drew ids of the sequence meanwhile: drawing 100,000 ids and answering one pair takes about
-- 0.02 s); the caller then, in the same transaction, runs COPY <copy_table> (client_id,
-- engagement_id, id, flow_id, name, asset_type, hostname, ip_address, operating_system, attributes)
-- FROM STDIN, the n-th asset with the n-th id, all of this flow, and commits. The partition's CHECK
-- constraints check every row's tenant (PF401, PF403) and flow (PF422); its statement triggers refuse
-- a COPY no begin_copy_assets opened (PF422) and rows of a flow being deleted (PF404). copy_table
-- (and id_ranges) are NULL where the caller may not COPY into the partition (on Citus): add_assets
-- then. Lock waits are bounded from here on, as in begin_copy_records.
create or replace function pyflows.begin_copy_assets(p_flow_id uuid, p_count integer)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    c_table      constant text := 'pyflows.assets_default';
    v_copy       boolean := pg_catalog.has_table_privilege(c_table, 'INSERT');
    v_seq        regclass := pg_catalog.pg_get_serial_sequence('pyflows.assets', 'id')::regclass;
    v_ids        bigint[];
    v_first      bigint;
    v_last       bigint;
begin
    perform pyflows._require_context();
    if p_count is null or p_count not between 0 and 1000000 then
        raise exception 'count must be from 0 to 1,000,000 (got %)', coalesce(p_count::text, 'NULL')
            using errcode = 'PF422';
    end if;
    perform pyflows._flow_for_loading(p_flow_id);
    perform pyflows._bound_lock_waits();  -- for the COPY that follows, in this transaction
    if v_copy then
        -- One nextval a row, in order, into an array: the series in the select list (no table of it
        -- first) and no aggregate, about half the work of array_agg, min and max over a series in FROM.
        -- The sequence is ascending, so the first and last ids are the array's ends.
        v_ids := array(select pg_catalog.nextval(v_seq) from (select pg_catalog.generate_series(1, p_count)) as g);
        v_first := v_ids[1];
        v_last := v_ids[p_count];
        -- The flow the partition's COPY statements of this transaction take rows of (migration 0025).
        perform pg_catalog.set_config('pyflows.copy_flow', p_flow_id::text, true);
    end if;
    update pyflows.discovery_flows as f set last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = p_flow_id;
    return jsonb_build_object('flow_id', p_flow_id, 'client_id', c_client, 'engagement_id', c_engagement,
                              'id_ranges',
                              case when not v_copy then null
                                   -- p_count distinct ids that span p_count values are one run
                                   -- (none drawn: _id_ranges answers [])
                                   when v_last - v_first + 1 = p_count
                                   then jsonb_build_array(jsonb_build_array(v_first, v_last))
                                   else pyflows._id_ranges(v_ids) end,
                              'copy_table', case when v_copy then c_table end);
end;
$$;

-- The field mappings of an import, from the staging table p_stage or, when it is NULL, the JSON array
-- p_rows (source_field, target_attribute, confidence, status; a NULL status is 'suggested'). Result:
-- {import_id, flow_id, loaded}. The body of load_mappings and add_mappings.
create or replace function pyflows._load_mappings(p_import_id uuid, p_stage text, p_rows jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow_id    uuid;
    v_n          bigint;
    v_message    text;
    v_constraint text;
    v_stage      regclass;
    v_wait       text;
begin
    perform pyflows._require_context();
    v_flow_id := pyflows._import_for_loading(p_import_id);
    v_stage := pyflows._stage_or_batch(
        p_stage, array['source_field text', 'target_attribute text', 'confidence numeric', 'status text'],
        p_rows, array['source_field', 'target_attribute', 'confidence', 'status']);
    v_wait := pyflows._bound_lock_waits();
    begin
        execute format('with inserted as (
                            insert into pyflows.import_field_mappings (client_id, engagement_id, import_id,
                                                                       source_field, target_attribute, confidence,
                                                                       status)
                            select $1, $2, $3, s.source_field, s.target_attribute, s.confidence,
                                   coalesce(s.status, ''suggested'')
                              from %s
                            returning 1)
                        select count(*) from inserted',
                       case when v_stage is null
                            then 'pg_catalog.jsonb_to_recordset($5) as s(source_field text, target_attribute text, '
                                 'confidence numeric, status text)'
                            else format('%s as s', v_stage) end)
          using c_client, c_engagement, p_import_id, null::bigint, p_rows
          into v_n;
    exception when not_null_violation or check_violation or unique_violation or data_exception then
        get stacked diagnostics v_message = message_text, v_constraint = constraint_name;
        perform pyflows._refuse_rows('field mappings', v_message, v_constraint);
    when lock_not_available or deadlock_detected then
        perform pyflows._refuse_busy(v_flow_id, 'loaded', sqlerrm);
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    return jsonb_build_object('import_id', p_import_id, 'flow_id', v_flow_id, 'loaded', v_n);
end;
$$;

-- The field mappings of an import, from p_stage (source_field, target_attribute, confidence, status;
-- a NULL status is 'suggested'). Result: {import_id, flow_id, loaded}.
create or replace function pyflows.load_mappings(p_import_id uuid, p_stage text)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_mappings(p_import_id, p_stage, null);
end;
$$;

-- The field mappings of an import from p_mappings, a JSON array of objects with the keys
-- source_field, target_attribute, confidence, status (each optional but source_field). Result: as
-- load_mappings.
create or replace function pyflows.add_mappings(p_import_id uuid, p_mappings jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_mappings(p_import_id, null, coalesce(p_mappings, 'null'));
end;
$$;

-- The assets of a flow, from the staging table p_stage (ord, name, asset_type, hostname, ip_address,
-- operating_system, attributes; a NULL attributes is {}) or, when it is NULL, the JSON array p_rows
-- (the same keys; ord is each object's position, from 1). Returns each row's
-- ord with the id its asset got, so that the caller can build dependency edges. The ids are drawn
-- from the column's identity sequence first (the rows read once, nothing sorted), then inserted with
-- the rows: pyflows_app has USAGE on that sequence, which lets it draw ids and nothing else.
-- The body of load_assets and add_assets.
create or replace function pyflows._load_assets(p_flow_id uuid, p_stage text, p_rows jsonb)
returns table (ord bigint, asset_id bigint)
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_message    text;
    v_constraint text;
    v_stage      regclass;
    v_wait       text;
begin
    perform pyflows._require_context();
    perform pyflows._flow_for_loading(p_flow_id);
    v_stage := pyflows._stage_or_batch(
        p_stage, array['ord bigint', 'name text', 'asset_type text', 'hostname text', 'ip_address inet',
                       'operating_system text', 'attributes jsonb'],
        p_rows, array['name', 'asset_type', 'hostname', 'ip_address', 'operating_system', 'attributes']);
    v_wait := pyflows._bound_lock_waits();
    begin
        return query execute format(
            'with staged as materialized (
                 select pg_catalog.nextval($4) as id, s.* from %1$s),
                  inserted as (
                      insert into pyflows.assets (client_id, engagement_id, id, flow_id, name, asset_type, hostname,
                                                  ip_address, operating_system, attributes)
                      select $1, $2, s.id, $3, s.name, s.asset_type, s.hostname, s.ip_address, s.operating_system,
                             coalesce(s.attributes, ''{}'')
                        from staged as s
                      returning 1)
             select staged.ord, staged.id from staged',
            case when v_stage is null
                 then 'rows from (pg_catalog.jsonb_to_recordset($5) as (name text, asset_type text, hostname text, '
                      'ip_address inet, operating_system text, attributes jsonb)) '
                      'with ordinality as s(name, asset_type, hostname, ip_address, operating_system, attributes, ord)'
                 else format('%s as s', v_stage) end)
          using c_client, c_engagement, p_flow_id,
                pg_catalog.pg_get_serial_sequence('pyflows.assets', 'id')::regclass, p_rows;
    exception when not_null_violation or check_violation or unique_violation or data_exception then
        get stacked diagnostics v_message = message_text, v_constraint = constraint_name;
        perform pyflows._refuse_rows('assets', v_message, v_constraint);
    when lock_not_available or deadlock_detected then
        perform pyflows._refuse_busy(p_flow_id, 'loaded', sqlerrm);
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    update pyflows.discovery_flows as f set last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = p_flow_id;
end;
$$;

-- The assets of a flow, from p_stage (ord, name, asset_type, hostname, ip_address, operating_system,
-- attributes; a NULL attributes is {}). Returns each staged row's ord with the id its asset got.
create or replace function pyflows.load_assets(p_flow_id uuid, p_stage text)
returns table (ord bigint, asset_id bigint)
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return query select l.ord, l.asset_id from pyflows._load_assets(p_flow_id, p_stage, null) as l;
end;
$$;

-- The assets of a flow from p_assets, a JSON array of objects with the keys name, asset_type,
-- hostname, ip_address, operating_system, attributes. Returns each asset's position in the array
-- (ord, from 1) with the id it got.
create or replace function pyflows.add_assets(p_flow_id uuid, p_assets jsonb)
returns table (ord bigint, asset_id bigint)
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return query select l.ord, l.asset_id from pyflows._load_assets(p_flow_id, null, coalesce(p_assets, 'null')) as l;
end;
$$;

-- The edges of an add_dependencies call given as arrays, checked: none NULL, each of one dimension (or
-- empty), all three of one length (an edge a position). PF422 otherwise.
create or replace function pyflows._edge_arrays(p_sources bigint[], p_targets bigint[], p_types text[])
returns void
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if p_sources is null or p_targets is null or p_types is null then
        raise exception 'edges as arrays need all three: source_asset_ids, target_asset_ids, dependency_types'
            using errcode = 'PF422';
    end if;
    if coalesce(pg_catalog.array_ndims(p_sources), 1) <> 1 or coalesce(pg_catalog.array_ndims(p_targets), 1) <> 1
       or coalesce(pg_catalog.array_ndims(p_types), 1) <> 1 then
        raise exception 'the arrays of edges must have one dimension' using errcode = 'PF422';
    end if;
    if pg_catalog.cardinality(p_targets) <> pg_catalog.cardinality(p_sources)
       or pg_catalog.cardinality(p_types) <> pg_catalog.cardinality(p_sources) then
        raise exception 'the arrays of edges must be of one length (got %, %, %)', pg_catalog.cardinality(p_sources),
            pg_catalog.cardinality(p_targets), pg_catalog.cardinality(p_types)
            using errcode = 'PF422', hint = 'Position n of each array is edge n.';
    end if;
end;
$$;

drop function if exists pyflows._load_dependencies(uuid, text, jsonb);
-- The dependency edges of a flow, from the staging table p_stage, the JSON array p_rows (when p_stage is
-- NULL) or, with p_arrays, the arrays p_sources, p_targets, p_types (checked by _edge_arrays; edge n
-- at position n of each): ids of assets of the context (this flow's or another flow's) and the edge's
-- type. Result: {flow_id, loaded}. The body of load_dependencies and both add_dependencies.
create or replace function pyflows._load_dependencies(p_flow_id uuid, p_stage text, p_rows jsonb, p_arrays boolean,
                                                      p_sources bigint[], p_targets bigint[], p_types text[])
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_n          bigint;
    v_message    text;
    v_constraint text;
    v_stage      regclass;
    v_from       text;
    v_wait       text;
begin
    perform pyflows._require_context();
    perform pyflows._flow_for_loading(p_flow_id);
    if p_arrays then
        perform pyflows._edge_arrays(p_sources, p_targets, p_types);
        v_from := 'rows from (pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8)) '
                  'as s(source_asset_id, target_asset_id, dependency_type)';
    else
        v_stage := pyflows._stage_or_batch(
            p_stage, array['source_asset_id bigint', 'target_asset_id bigint', 'dependency_type text'],
            p_rows, array['source_asset_id', 'target_asset_id', 'dependency_type']);
        v_from := case when v_stage is null
                       then 'pg_catalog.jsonb_to_recordset($5) as s(source_asset_id bigint, '
                            'target_asset_id bigint, dependency_type text)'
                       else format('%s as s', v_stage) end;
    end if;
    v_wait := pyflows._bound_lock_waits();
    begin
        execute format('with inserted as (
                            insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id,
                                                                    source_asset_id, target_asset_id, dependency_type)
                            select $1, $2, $3, s.source_asset_id, s.target_asset_id, s.dependency_type from %s
                            returning 1)
                        select count(*) from inserted', v_from)
          using c_client, c_engagement, p_flow_id, null::bigint, p_rows, p_sources, p_targets, p_types
          into v_n;
    exception when not_null_violation or check_violation or unique_violation or foreign_key_violation
                   or data_exception then
        get stacked diagnostics v_message = message_text, v_constraint = constraint_name;
        perform pyflows._refuse_rows('dependency edges', v_message, v_constraint);
    when lock_not_available or deadlock_detected then
        perform pyflows._refuse_busy(p_flow_id, 'loaded', sqlerrm);
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    update pyflows.discovery_flows as f set last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = p_flow_id;
    return jsonb_build_object('flow_id', p_flow_id, 'loaded', v_n);
end;
$$;

-- The dependency edges of a flow, from p_stage (source_asset_id, target_asset_id, dependency_type).
-- Result: {flow_id, loaded}.
create or replace function pyflows.load_dependencies(p_flow_id uuid, p_stage text)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_dependencies(p_flow_id, p_stage, null, false, null, null, null);
end;
$$;

-- The dependency edges of a flow from p_edges, a JSON array of objects with the keys source_asset_id,
-- target_asset_id, dependency_type. Result: as load_dependencies.
create or replace function pyflows.add_dependencies(p_flow_id uuid, p_edges jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_dependencies(p_flow_id, null, coalesce(p_edges, 'null'), false, null, null, null);
end;
$$;

-- The dependency edges of a flow from three arrays, edge n at position n of each: its source asset's
-- id, its target asset's id and its type (all three of one length; PF422 otherwise). The same load as
-- add_dependencies(p_flow_id, p_edges) without JSON: a worker that can send arrays (in PostgreSQL's
-- binary format, where its driver can) spares the server parsing a JSON batch. Result: as
-- load_dependencies.
create or replace function pyflows.add_dependencies(p_flow_id uuid, p_source_asset_ids bigint[],
                                                    p_target_asset_ids bigint[], p_dependency_types text[])
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._load_dependencies(p_flow_id, null, null, true, p_source_asset_ids, p_target_asset_ids,
                                      p_dependency_types);
end;
$$;

revoke all on function pyflows._stage(text, text[]), pyflows._batch(jsonb, text[]),
    pyflows._stage_or_batch(text, text[], jsonb, text[]), pyflows._flow_for_loading(uuid),
    pyflows._import_for_loading(uuid), pyflows._refuse_rows(text, text, text), pyflows._last_row_number(uuid),
    pyflows._load_records(uuid, text, jsonb), pyflows._load_mappings(uuid, text, jsonb),
    pyflows._load_assets(uuid, text, jsonb),
    pyflows._load_dependencies(uuid, text, jsonb, boolean, bigint[], bigint[], text[]),
    pyflows._edge_arrays(bigint[], bigint[], text[]), pyflows.add_dependencies(uuid, bigint[], bigint[], text[]),
    pyflows.load_records(uuid, text), pyflows.load_mappings(uuid, text), pyflows.load_assets(uuid, text),
    pyflows.load_dependencies(uuid, text), pyflows.add_records(uuid, jsonb), pyflows.add_mappings(uuid, jsonb),
    pyflows.add_assets(uuid, jsonb), pyflows.add_dependencies(uuid, jsonb), pyflows.begin_copy_records(uuid),
    pyflows.begin_copy_assets(uuid, integer), pyflows._id_ranges(bigint[]) from public;
-- The private _load_* functions run as the caller like the public ones (SECURITY INVOKER), so the
-- caller needs EXECUTE on them; they insert only what the caller's policies let it insert.
grant execute on function pyflows._stage(text, text[]), pyflows._batch(jsonb, text[]),
    pyflows._stage_or_batch(text, text[], jsonb, text[]), pyflows._flow_for_loading(uuid),
    pyflows._import_for_loading(uuid), pyflows._refuse_rows(text, text, text), pyflows._last_row_number(uuid),
    pyflows._load_records(uuid, text, jsonb), pyflows._load_mappings(uuid, text, jsonb),
    pyflows._load_assets(uuid, text, jsonb),
    pyflows._load_dependencies(uuid, text, jsonb, boolean, bigint[], bigint[], text[]),
    pyflows._edge_arrays(bigint[], bigint[], text[]), pyflows.add_dependencies(uuid, bigint[], bigint[], text[]),
    pyflows.load_records(uuid, text), pyflows.load_mappings(uuid, text), pyflows.load_assets(uuid, text),
    pyflows.load_dependencies(uuid, text), pyflows.add_records(uuid, jsonb), pyflows.add_mappings(uuid, jsonb),
    pyflows.add_assets(uuid, jsonb), pyflows.add_dependencies(uuid, jsonb), pyflows.begin_copy_records(uuid),
    pyflows.begin_copy_assets(uuid, integer), pyflows._id_ranges(bigint[]) to pyflows_app;
-- load_assets draws the ids of the assets it inserts from their identity sequence.
grant usage on sequence pyflows.assets_id_seq to pyflows_app;
