-- pyflows sql/090_scale_out: the distributed layout on Citus, and the report of the layout found.
--
-- One schema and one set of functions serve both engines. On a database with the citus extension,
-- `pyflows migrate` ends with pyflows._distribute(), which makes every tenant table a hash-distributed
-- table by client_id, all co-located with pyflows.engagements, and clients and phases reference
-- tables; on plain PostgreSQL it does nothing. It is idempotent: it distributes what is not yet
-- distributed, so the same call moves a single-node database restored onto a coordinator
-- (docs/scale-out.md).

-- The layout: each table, what it becomes on Citus, in the order it is distributed (parents first).
create or replace function pyflows._layout_plan()
returns table (table_name text, kind text, ordinal integer)
language sql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select t.name, t.kind, t.ordinal
      from (values ('pyflows.clients', 'reference', 1),
                   ('pyflows.phases', 'reference', 2),
                   ('pyflows.engagements', 'distributed', 3),
                   ('pyflows.discovery_flows', 'distributed', 4),
                   ('pyflows.data_imports', 'distributed', 5),
                   ('pyflows.raw_import_records', 'distributed', 6),
                   ('pyflows.import_field_mappings', 'distributed', 7),
                   ('pyflows.assets', 'distributed', 8),
                   ('pyflows.asset_dependencies', 'distributed', 9),
                   ('pyflows.file_cleanup_queue', 'distributed', 10),
                   -- the audit trail: events and the archive beside the rows they record, the
                   -- events of no tenant on every node (the append-only guards read them)
                   ('pyflows_audit.events', 'distributed', 11),
                   ('pyflows_audit.global_events', 'reference', 12),
                   ('pyflows_audit.clients_chunks', 'distributed', 13),
                   ('pyflows_audit.engagements_chunks', 'distributed', 14),
                   ('pyflows_audit.discovery_flows_chunks', 'distributed', 15),
                   ('pyflows_audit.data_imports_chunks', 'distributed', 16),
                   ('pyflows_audit.raw_import_records_chunks', 'distributed', 17),
                   ('pyflows_audit.import_field_mappings_chunks', 'distributed', 18),
                   ('pyflows_audit.assets_chunks', 'distributed', 19),
                   ('pyflows_audit.asset_dependencies_chunks', 'distributed', 20)) as t(name, kind, ordinal)
$$;

-- {engine, citus_version, workers, tables: {name: kind found}, pending: [tables not yet as planned]}:
-- what `pyflows check` reports. Readable by every pyflows role (no tenant's data).
create or replace function pyflows.layout()
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_version text;
    v_workers integer;
    v_tables  jsonb := '{}';
    v_pending jsonb := '[]';
    v_kind    text;
    r         record;
begin
    select e.extversion into v_version from pg_catalog.pg_extension as e where e.extname = 'citus';
    if v_version is null then
        return jsonb_build_object('engine', 'postgresql', 'citus_version', null, 'workers', 0,
                                  'tables', '{}'::jsonb, 'pending', '[]'::jsonb);
    end if;
    -- Citus' catalogs are named through format(): they exist only where Citus is installed, so no
    -- static check of this function may look for them on plain PostgreSQL.
    execute pg_catalog.format('select count(*) from %s where noderole = ''primary'' and groupid <> 0',
                              'pg_catalog.pg_dist_node')
       into v_workers;
    for r in select p.table_name, p.kind from pyflows._layout_plan() as p order by p.ordinal loop
        execute pg_catalog.format('select case p.partmethod when ''h'' then ''distributed'' when ''n'' then
                            case when p.repmodel = ''t'' then ''reference'' else ''local'' end
                        else ''other'' end
                   from %s as p where p.logicalrelid = $1', 'pg_catalog.pg_dist_partition')
           into v_kind using r.table_name::regclass;
        v_tables := v_tables || jsonb_build_object(r.table_name, coalesce(v_kind, 'local'));
        if v_kind is distinct from r.kind then
            v_pending := v_pending || to_jsonb(r.table_name);
        end if;
    end loop;
    return jsonb_build_object('engine', 'citus', 'citus_version', v_version, 'workers', v_workers,
                              'tables', v_tables, 'pending', v_pending);
end;
$$;

-- Distribute what the plan says and is not distributed yet; nothing on plain PostgreSQL. The foreign
-- keys between the planned tables are dropped first and added back after, with their cascades: Citus
-- turns a table with a foreign key to a reference table into a local table it cannot co-locate.
-- Rows already in a table are copied to its shards, and the coordinator's copy is emptied.
-- Only the schema owner runs it (`pyflows migrate`).
create or replace function pyflows._distribute()
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_done    jsonb := '[]';
    v_pending jsonb;
    v_keys    text[] := '{}';
    v_key     text;
    v_fn      regprocedure;
    r         record;
    -- Citus' functions, named through format(): they exist only where Citus is installed, so no
    -- static check of this function may look for them on plain PostgreSQL.
    c_call    constant text := 'select %s($1)';
begin
    if not exists (select from pg_catalog.pg_extension where extname = 'citus') then
        return v_done;
    end if;
    -- Citus routes _archived_counts' query by the bound client: it cannot keep the generic plan that
    -- migration 0016 gives the function on PostgreSQL (a database moved here from one node has it).
    if exists (select from pg_catalog.pg_proc as p
                where p.oid = 'pyflows_audit._archived_counts(uuid, bigint[])'::pg_catalog.regprocedure
                  and p.proconfig @> array['plan_cache_mode=force_generic_plan']) then
        alter function pyflows_audit._archived_counts(uuid, bigint[]) reset plan_cache_mode;
    end if;
    -- A partition that takes COPY on one node (migration 0021) does not here: its statement trigger
    -- reads the rows' transition table, which Citus cannot plan on a shard. The application loses
    -- INSERT on it, and begin_copy_records names no table, so the loads go through add_records.
    for r in select c.oid::regclass as part from pg_catalog.pg_class as c
              where c.relnamespace = 'pyflows'::regnamespace and c.relkind = 'r' and c.relispartition
                and not c.relrowsecurity and pg_catalog.has_table_privilege('pyflows_app', c.oid, 'INSERT') loop
        execute pg_catalog.format('revoke insert on %s from pyflows_app', r.part);
    end loop;
    v_pending := pyflows.layout() -> 'pending';
    if jsonb_array_length(v_pending) = 0 then
        return v_done;
    end if;
    -- Citus needs both for this DDL: triggers on distributed tables (they run on the shards), and
    -- one connection per worker where a reference table is involved.
    set local citus.enable_unsafe_triggers = on;
    set local citus.multi_shard_modify_mode = 'sequential';
    -- The shards' triggers and policies call pyflows' functions on the workers. Citus copies a
    -- function created while it is installed; those of a database that had pyflows before Citus
    -- (a single-node database moved onto a cluster) are copied here, with what they depend on, in
    -- any order: the workers do not check a function's body against functions not copied yet.
    set local citus.propagate_set_commands = 'local';
    set local check_function_bodies = off;
    for v_fn in execute pg_catalog.format(
            'select p.oid::regprocedure from pg_catalog.pg_proc as p
              where p.pronamespace in (''pyflows''::regnamespace, ''pyflows_audit''::regnamespace)
                and not exists (select from %s as o
                                 where o.classid = ''pg_catalog.pg_proc''::regclass and o.objid = p.oid)
              order by p.oid', 'pg_catalog.pg_dist_object') loop
        execute pg_catalog.format(c_call, 'create_distributed_function') using v_fn;
    end loop;
    for r in select c.conrelid::regclass as rel, c.conname, pg_catalog.pg_get_constraintdef(c.oid) as def
               from pg_catalog.pg_constraint as c
              where c.contype = 'f' and c.conparentid = 0  -- a partition's keys come with its parent's
                and c.conrelid in (select p.table_name::regclass from pyflows._layout_plan() as p)
              order by c.conrelid::regclass::text, c.conname loop
        v_keys := v_keys || pg_catalog.format('alter table %s add constraint %I %s', r.rel, r.conname, r.def);
        execute pg_catalog.format('alter table %s drop constraint %I', r.rel, r.conname);
    end loop;
    for r in select p.table_name, p.kind from pyflows._layout_plan() as p
              where v_pending ? p.table_name
              order by p.ordinal loop
        if r.kind = 'reference' then
            execute pg_catalog.format(c_call, 'create_reference_table') using r.table_name::regclass;
        elsif r.table_name = 'pyflows.engagements' then
            execute pg_catalog.format('select %s($1, ''client_id'')', 'create_distributed_table') using r.table_name::regclass;
        else
            execute pg_catalog.format('select %s($1, ''client_id'', colocate_with => ''pyflows.engagements'')',
                                      'create_distributed_table')
              using r.table_name::regclass;
        end if;
        -- The rows now live on the shards; the coordinator's own copy goes. That TRUNCATE removes
        -- nothing a reader can see, so the tables' refuse_truncate triggers are not asked.
        perform pg_catalog.set_config('session_replication_role', 'replica', true);
        execute pg_catalog.format(c_call, 'truncate_local_data_after_distributing_table') using r.table_name::regclass;
        perform pg_catalog.set_config('session_replication_role', 'origin', true);
        v_done := v_done || to_jsonb(r.table_name);
    end loop;
    foreach v_key in array v_keys loop
        execute v_key;
    end loop;
    return v_done;
end;
$$;

revoke all on function pyflows._layout_plan(), pyflows.layout(), pyflows._distribute() from public;
grant execute on function pyflows._layout_plan(), pyflows.layout() to pyflows_app, pyflows_admin;
