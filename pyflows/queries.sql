-- The SQL that pyflows' Python side runs, one named block each ("-- name: NAME"), called by name
-- through pyflows.queries.query(). The SQL API itself lives in sql/ and migrations/.

-- name: lock_sql_definitions
-- Serialise concurrent sql/ applications (transaction-level: nothing leaks behind a pool).
select pg_advisory_xact_lock(hashtext('pyflows: sql definitions'))

-- name: record_sql_definitions
insert into pyflows.installed_sql (singleton, digest, pyflows_version, applied_at, migrations)
values (true, %(digest)s, %(version)s, now(), %(migrations)s)
on conflict (singleton) do update
   set digest = excluded.digest, pyflows_version = excluded.pyflows_version, applied_at = excluded.applied_at,
       migrations = excluded.migrations

-- name: record_migrations
-- After a rollback: the migrations still applied (none of this when 0013, which adds the column, is gone).
update pyflows.installed_sql set migrations = %(migrations)s

-- name: schema_state
-- Whether the schema is there; whether installed_sql is, and this role may read it; whether it lists the
-- migrations (0013 on); whether this role may read the migration table.
select exists (select from pg_catalog.pg_namespace where nspname = 'pyflows'),
       coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass('pyflows.installed_sql'), 'select'), false),
       exists (select from pg_catalog.pg_attribute
                where attrelid = pg_catalog.to_regclass('pyflows.installed_sql') and attname = 'migrations'
                  and not attisdropped),
       coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass(%(migration_table)s), 'select'), false)

-- name: citus_installed
select exists (select from pg_catalog.pg_extension where extname = 'citus')

-- name: citus_ddl_settings
-- For migrations on Citus (see migrations._prepare_for_ddl); session-level, on pyflows-migrate's own connection.
-- propagate_set_commands: each transaction's SET LOCAL lock_timeout reaches the workers.
select set_config('citus.enable_unsafe_triggers', 'on', false),
       set_config('citus.multi_shard_modify_mode', 'sequential', false),
       set_config('citus.propagate_set_commands', 'local', false)

-- name: citus_worker_roles
-- pyflows_app and pyflows_admin on every worker, each created there by itself (Citus must not pass the
-- statement on to the other nodes); see migrations._prepare_for_ddl.
select nodename || ':' || nodeport, success, result from pg_catalog.run_command_on_workers($cmd$
    begin;
    set local citus.enable_create_role_propagation to off;
    do $roles$
    begin
        if not exists (select from pg_catalog.pg_roles where rolname = 'pyflows_app') then
            create role pyflows_app nologin nosuperuser nocreatedb nocreaterole nobypassrls;
        end if;
        if not exists (select from pg_catalog.pg_roles where rolname = 'pyflows_admin') then
            create role pyflows_admin nologin nosuperuser nocreatedb nocreaterole nobypassrls;
        end if;
        grant pyflows_app to pyflows_admin;
    end
    $roles$;
    commit;
$cmd$)

-- name: distribute
-- On Citus, the distributed layout (sql/090_scale_out.sql); nothing on plain PostgreSQL.
select pyflows._distribute()

-- name: layout_readable
-- Whether this schema has pyflows.layout() (sql/090, pyflows 0.x on) and this role may call it.
select coalesce(pg_catalog.has_function_privilege(pg_catalog.to_regprocedure('pyflows.layout()'), 'execute'), false)

-- name: layout
select pyflows.layout()

-- name: installed_sql_digest
select digest from pyflows.installed_sql

-- name: installed_migrations
select migrations from pyflows.installed_sql

-- name: applied_migrations
select migration_id from _yoyo_migration

-- name: database_exists
select exists (select from pg_catalog.pg_database where datname = %(dbname)s)

-- name: set_context
select pyflows.set_context(%(client_id)s, %(engagement_id)s, %(actor)s)

-- name: tenant_names
select c.name, e.name
  from pyflows.engagements as e
  join pyflows.clients as c on c.id = e.client_id
 where e.client_id = %(client_id)s and e.id = %(engagement_id)s

-- name: demo_bind
-- The demo tenant's settings for this transaction (set_context would refuse a tenant already removed),
-- and how long its delete may wait for rows another session holds.
select set_config('pyflows.client_id', %(client_id)s::text, true),
       set_config('pyflows.engagement_id', %(engagement_id)s::text, true),
       set_config('lock_timeout', %(lock_timeout)s, true)

-- name: demo_remove
-- A demo client with everything it holds (the cascade; archived and audited as a sql.delete).
delete from pyflows.clients where id = %(client_id)s

-- name: demo_flow_summary
-- The current context's flows with what each owns; the demo prints it. The tenant filter is
-- spelled out because the demo usually runs as a superuser, whom RLS does not restrict.
select f.id, f.name, f.status, f.current_phase, f.progress_percentage,
       (select count(*) from pyflows.data_imports as i
         where (i.client_id, i.engagement_id, i.flow_id) = (f.client_id, f.engagement_id, f.id)) as imports,
       (select count(*) from pyflows.raw_import_records as r
          join pyflows.data_imports as i
            on (i.client_id, i.engagement_id, i.id) = (r.client_id, r.engagement_id, r.import_id)
         where (i.client_id, i.engagement_id, i.flow_id) = (f.client_id, f.engagement_id, f.id)) as raw_records,
       (select count(*) from pyflows.import_field_mappings as m
          join pyflows.data_imports as i
            on (i.client_id, i.engagement_id, i.id) = (m.client_id, m.engagement_id, m.import_id)
         where (i.client_id, i.engagement_id, i.flow_id) = (f.client_id, f.engagement_id, f.id)) as mappings,
       (select count(*) from pyflows.assets as a
         where (a.client_id, a.engagement_id, a.flow_id) = (f.client_id, f.engagement_id, f.id)) as assets,
       (select count(*) from pyflows.asset_dependencies as d
         where (d.client_id, d.engagement_id, d.flow_id) = (f.client_id, f.engagement_id, f.id)) as dependencies
  from pyflows.discovery_flows as f
 where f.client_id = pyflows.current_client_id() and f.engagement_id = pyflows.current_engagement_id()
 order by f.created_at

-- name: role_exists
select exists (select from pg_catalog.pg_roles where rolname = %(role)s)

-- name: set_raw_context
-- Bind the transaction to ids whose engagement may not exist yet (provisioning as the owner).
select set_config('pyflows.client_id', %(client_id)s::text, true),
       set_config('pyflows.engagement_id', %(engagement_id)s::text, true)

-- name: insert_client
insert into pyflows.clients (id, name) values (%(client_id)s, %(name)s)

-- name: insert_engagement
insert into pyflows.engagements (client_id, id, name) values (%(client_id)s, %(engagement_id)s, %(name)s)

-- name: flow_gate
select pyflows.flow_gate()

-- name: start_flow
select pyflows.start_flow(p_name => %(name)s, p_created_by => %(created_by)s)

-- name: start_import
select pyflows.start_import(p_filename => %(filename)s, p_storage_uri => %(storage_uri)s,
                            p_byte_size => %(byte_size)s, p_flow_name => %(flow_name)s)

-- name: add_import
select pyflows.add_import(p_flow_id => %(flow_id)s, p_filename => %(filename)s,
                          p_storage_uri => %(storage_uri)s, p_byte_size => %(byte_size)s)

-- name: list_flows
select * from pyflows.list_flows(p_filter => %(filter)s, p_limit => %(limit)s, p_offset => %(offset)s)

-- name: list_incomplete_flows
select * from pyflows.list_incomplete_flows(p_limit => %(limit)s, p_offset => %(offset)s)

-- name: flow_details
select pyflows.flow_details(p_flow_id => %(flow_id)s)

-- name: record_progress
select pyflows.record_progress(p_flow_id => %(flow_id)s, p_phase => %(phase)s, p_insight => %(insight)s)

-- name: heartbeat
select pyflows.heartbeat(p_flow_id => %(flow_id)s)

-- name: set_flow_status
select pyflows.set_flow_status(p_flow_id => %(flow_id)s, p_status => %(status)s, p_error => %(error)s)

-- name: resume_flow
select pyflows.resume_flow(p_flow_id => %(flow_id)s)

-- name: admin_list_incomplete_flows
select * from pyflows.admin_list_incomplete_flows(p_idle_for => %(idle_for)s)

-- name: admin_metrics
select pyflows.admin_metrics()

-- name: deletion_impact
select pyflows.deletion_impact(p_flow_id => %(flow_id)s)

-- name: deletion_safety
select pyflows.deletion_safety(p_flow_id => %(flow_id)s, p_force => %(force)s)

-- name: delete_flow
select pyflows.delete_flow(p_flow_id => %(flow_id)s, p_reason => %(reason)s, p_force => %(force)s)

-- name: delete_flows
select * from pyflows.delete_flows(p_flow_ids => %(flow_ids)s::uuid[], p_reason => %(reason)s,
                                   p_force => %(force)s, p_atomic => %(atomic)s)

-- name: list_audit_events
select * from pyflows.list_audit_events(p_flow_id => %(flow_id)s, p_since => %(since)s, p_limit => %(limit)s)

-- name: audit_event
select pyflows.audit_event(p_event_id => %(event_id)s)

-- name: claim_file_cleanups
select * from pyflows.claim_file_cleanups(p_limit => %(limit)s, p_lease => %(lease)s)

-- name: finish_file_cleanup
select pyflows.finish_file_cleanup(p_id => %(id)s, p_error => %(error)s)

-- name: restore_flow
select pyflows.restore_flow(p_event_id => %(event_id)s)

-- name: set_session_context
select pyflows.set_session_context(%(client_id)s, %(engagement_id)s, %(actor)s)

-- name: clear_context
select pyflows.clear_context()

-- name: purge_flow
call pyflows.purge_flow(p_flow_id => %(flow_id)s, p_reason => %(reason)s, p_batch_rows => %(batch_rows)s,
                        p_force => %(force)s)

-- name: last_purge_event
select id from pyflows_audit.events
 where flow_id = %(flow_id)s and action = 'flow.purge'
   and client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id()
 order by id desc limit 1

-- name: prune_audit
select pyflows.prune_audit(p_older_than => %(older_than)s, p_actor => %(actor)s) as events

-- name: admin_list_audit_events
select * from pyflows.admin_list_audit_events(p_since => %(since)s, p_action => %(action)s, p_limit => %(limit)s)

-- name: add_records
select pyflows.add_records(p_import_id => %(import_id)s, p_records => %(rows)s)

-- name: begin_copy_records
select pyflows.begin_copy_records(p_import_id => %(import_id)s)

-- name: add_mappings
select pyflows.add_mappings(p_import_id => %(import_id)s, p_mappings => %(rows)s)

-- name: add_assets
-- One row a batch: its ids in the order given, as one array (10,000 rows of two columns cost the client
-- more to read than the server to send).
select coalesce(array_agg(a.asset_id order by a.ord), '{}') as ids
  from pyflows.add_assets(p_flow_id => %(flow_id)s, p_assets => %(rows)s) as a

-- name: begin_copy_assets
select pyflows.begin_copy_assets(p_flow_id => %(flow_id)s, p_count => %(count)s)

-- name: add_dependencies
-- The edges as three arrays, sent in PostgreSQL's binary format: nothing for the server to parse.
select pyflows.add_dependencies(p_flow_id => %(flow_id)s, p_source_asset_ids => %(sources)b::bigint[],
                                p_target_asset_ids => %(targets)b::bigint[], p_dependency_types => %(types)b::text[])

-- name: add_client
select pyflows.add_client(p_name => %(name)s, p_client_id => %(client_id)s)

-- name: add_engagement
select pyflows.add_engagement(p_client_id => %(client_id)s, p_name => %(name)s, p_engagement_id => %(engagement_id)s)

-- name: list_tenants
select * from pyflows.list_tenants()
