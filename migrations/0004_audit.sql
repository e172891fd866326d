-- pyflows 0004: the audit trail of deletions, the archive of deleted rows, and the file outbox wiring.
--
-- pyflows_audit.events holds one row per logical action; pyflows_audit.<table> holds every deleted
-- row of pyflows.<table> with the event that deleted it (same columns, event_id first), so a deletion
-- can be restored. Both are written only by SECURITY DEFINER code owned by the schema owner: the
-- statement-level AFTER DELETE triggers below (which also see rows removed by the foreign-key
-- cascade) and the API's delete functions. Nothing here has a foreign key to what it records.
-- Events are append-only: an event may gain counts only inside the transaction that created it;
-- UPDATE after that, DELETE and TRUNCATE are refused by triggers.
-- depends: 0003_row_level_security

create table pyflows_audit.events (
    id                bigint generated always as identity,
    occurred_at       timestamptz not null default now(),
    txid              bigint not null default txid_current(),
    action            text not null,
    actor             text,
    db_user           text not null default session_user,
    application_name  text default nullif(current_setting('application_name', true), ''),
    client_addr       inet default inet_client_addr(),
    client_id         uuid,
    engagement_id     uuid,
    flow_id           uuid,
    batch_id          uuid,
    reason            text,
    forced            boolean not null default false,
    impact            jsonb,
    deleted           jsonb not null default '{}',
    flow_snapshot     jsonb,
    statement         text,
    details           jsonb not null default '{}',
    constraint events_pkey primary key (id),
    constraint events_action_check check (action in (
        'flow.start', 'flow.resume', 'flow.delete', 'flow.restore', 'flow.purge', 'audit.prune', 'sql.delete'))
);

create index events_tenant on pyflows_audit.events (client_id, engagement_id, occurred_at desc);
create index events_flow on pyflows_audit.events (client_id, engagement_id, flow_id);
create index events_batch on pyflows_audit.events (batch_id) where batch_id is not null;
create index events_txid on pyflows_audit.events (txid);

-- The archive: the same columns as each tenant table, after the event that removed the rows.
create table pyflows_audit.clients (event_id bigint not null, like pyflows.clients);
create table pyflows_audit.engagements (event_id bigint not null, like pyflows.engagements);
create table pyflows_audit.discovery_flows (event_id bigint not null, like pyflows.discovery_flows);
create table pyflows_audit.data_imports (event_id bigint not null, like pyflows.data_imports);
create table pyflows_audit.raw_import_records (event_id bigint not null, like pyflows.raw_import_records);
create table pyflows_audit.import_field_mappings (event_id bigint not null, like pyflows.import_field_mappings);
create table pyflows_audit.assets (event_id bigint not null, like pyflows.assets);
create table pyflows_audit.asset_dependencies (event_id bigint not null, like pyflows.asset_dependencies);

-- Event ids only grow, so a BRIN index finds an event's rows without slowing the bulk copies down.
create index clients_event on pyflows_audit.clients using brin (event_id);
create index engagements_event on pyflows_audit.engagements using brin (event_id);
create index discovery_flows_event on pyflows_audit.discovery_flows using brin (event_id);
create index data_imports_event on pyflows_audit.data_imports using brin (event_id);
create index raw_import_records_event on pyflows_audit.raw_import_records using brin (event_id);
create index import_field_mappings_event on pyflows_audit.import_field_mappings using brin (event_id);
create index assets_event on pyflows_audit.assets using brin (event_id);
create index asset_dependencies_event on pyflows_audit.asset_dependencies using brin (event_id);

-- Which deletion enqueued a file, and a way to finish an entry by its id alone.
alter table pyflows.file_cleanup_queue add column event_id bigint;
create index file_cleanup_queue_id on pyflows.file_cleanup_queue (id);
create index file_cleanup_queue_event on pyflows.file_cleanup_queue (event_id) where event_id is not null;

-- ---- append-only ------------------------------------------------------------------------------------

-- Statement-level: refuses UPDATE, DELETE and TRUNCATE. The one exception is a DELETE by
-- pyflows.prune_audit, which marks its own transaction in the setting pyflows.audit_prune first.
create function pyflows_audit._refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit
as $$
begin
    if tg_op = 'DELETE' and current_setting('pyflows.audit_prune', true) = txid_current()::text then
        return null;
    end if;
    raise exception 'the pyflows audit trail is append-only: % on %.% is refused',
        tg_op, tg_table_schema, tg_table_name
        using errcode = 'PF403', hint = 'Old events are removed only by pyflows.prune_audit.';
end;
$$;

-- An event may gain its counts inside the transaction that created it; a purge event, which spans
-- many transactions, may gain counts and change its details until its state is no longer 'running'.
-- Nothing else may change.
create function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit
as $$
declare
    v_open_purge boolean := old.action = 'flow.purge' and old.details ->> 'state' = 'running';
begin
    if (to_jsonb(new) - 'deleted' - 'details') <> (to_jsonb(old) - 'deleted' - 'details')
       or (new.details is distinct from old.details and not v_open_purge)
       or (old.txid <> txid_current() and not v_open_purge) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;

create trigger events_guard_update before update on pyflows_audit.events
    for each row execute function pyflows_audit._guard_event_update();
create trigger events_refuse_delete before delete on pyflows_audit.events
    for each statement execute function pyflows_audit._refuse_change();
create trigger events_refuse_truncate before truncate on pyflows_audit.events
    for each statement execute function pyflows_audit._refuse_change();

create trigger refuse_change before update or delete on pyflows_audit.clients
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.clients
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.engagements
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.engagements
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.discovery_flows
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.discovery_flows
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.data_imports
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.data_imports
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.raw_import_records
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.raw_import_records
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.import_field_mappings
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.import_field_mappings
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.assets
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.assets
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_change before update or delete on pyflows_audit.asset_dependencies
    for each statement execute function pyflows_audit._refuse_change();
create trigger refuse_truncate before truncate on pyflows_audit.asset_dependencies
    for each statement execute function pyflows_audit._refuse_change();

-- ---- writing events ------------------------------------------------------------------------------

-- Open an event for an API action in the current tenant context and make it the transaction's
-- current event, so the delete triggers attach their counts and archived rows to it. Only the
-- SECURITY DEFINER API functions call it (applications have no EXECUTE on it).
create function pyflows_audit._begin_event(p_action text, p_flow_id uuid, p_reason text, p_impact jsonb,
                                           p_snapshot jsonb, p_forced boolean default false,
                                           p_details jsonb default '{}')
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
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
         p_impact, p_snapshot, current_query(), coalesce(p_details, '{}'))
    returning id into v_id;
    perform set_config('pyflows.audit_event', v_id::text, true);
    perform set_config('pyflows.audit_statement', 'api', true);
    return v_id;
end;
$$;

-- Close the API event: later deletes in the same transaction are audited on their own.
create function pyflows_audit._end_event()
returns void
language sql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
    select set_config('pyflows.audit_event', '', true), set_config('pyflows.audit_statement', '', true)
$$;

-- The event that rows deleted by the current statement belong to: the API's open event, the event
-- already opened for this statement, or a new 'sql.delete' event for a DELETE run outside the API
-- (its tenant and flow when the rows name exactly one, and the statement's text). The setting is
-- trusted only for an event of this transaction, or a running purge of the same tenant: a setting
-- pointing anywhere else is ignored and the rows get a 'sql.delete' event of their own.
create function pyflows_audit._statement_event(p_table text, p_tenants bigint, p_client uuid, p_engagement uuid,
                                               p_flows bigint, p_flow uuid)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
declare
    v_event     text := nullif(current_setting('pyflows.audit_event', true), '');
    v_statement text := nullif(current_setting('pyflows.audit_statement', true), '');
    v_id        bigint;
begin
    if v_event is not null and v_statement in ('api', statement_timestamp()::text) and exists (
        select from pyflows_audit.events as e
         where e.id = v_event::bigint
           and (e.txid = txid_current()
                or (e.action = 'flow.purge' and e.details ->> 'state' = 'running' and p_tenants = 1
                    and e.client_id = p_client and e.engagement_id = p_engagement))) then
        return v_event::bigint;
    end if;
    insert into pyflows_audit.events
        (action, actor, client_id, engagement_id, flow_id, batch_id, statement, details)
    values
        ('sql.delete', pyflows.current_actor(),
         case when p_tenants = 1 then p_client end, case when p_tenants = 1 then p_engagement end,
         case when p_flows = 1 then p_flow end, nullif(current_setting('pyflows.audit_batch', true), '')::uuid,
         current_query(), jsonb_build_object('first_table', p_table, 'tenants', p_tenants))
    returning id into v_id;
    perform set_config('pyflows.audit_event', v_id::text, true);
    perform set_config('pyflows.audit_statement', statement_timestamp()::text, true);
    return v_id;
end;
$$;

-- The event of this transaction that the settings name for the current statement, or NULL: the API's
-- open event, or a 'sql.delete' event already opened for this statement. One index lookup, so the
-- delete triggers need no pass over the deleted rows to find their event.
create function pyflows_audit._own_event()
returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pyflows_audit
as $$
    select e.id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and current_setting('pyflows.audit_statement', true) in ('api', statement_timestamp()::text)
       and e.txid = txid_current()
$$;

-- AFTER DELETE ... FOR EACH STATEMENT on every audited table: copy the deleted rows into the
-- archive table of the same name and add their number to the event's counts.
create function pyflows_audit._on_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
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
begin
    v_event := pyflows_audit._own_event();
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
    execute format('insert into pyflows_audit.%I select $1, o.* from old_rows as o', tg_table_name)
      using v_event;
    get diagnostics v_rows = row_count;
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

-- AFTER DELETE ... FOR EACH STATEMENT on data_imports (after audit_delete, by name): enqueue the
-- deleted imports' stored files in the outbox, in the same transaction, for `pyflows files drain`.
create function pyflows_audit._enqueue_files()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
begin
    insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id, event_id)
    select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id,
           nullif(current_setting('pyflows.audit_event', true), '')::bigint
      from old_rows as o;
    return null;
end;
$$;

create trigger audit_delete after delete on pyflows.clients
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.engagements
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.discovery_flows
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.data_imports
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.raw_import_records
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.import_field_mappings
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.assets
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger audit_delete after delete on pyflows.asset_dependencies
    referencing old table as old_rows for each statement execute function pyflows_audit._on_delete();
create trigger enqueue_files after delete on pyflows.data_imports
    referencing old table as old_rows for each statement execute function pyflows_audit._enqueue_files();

-- ---- who may read what ---------------------------------------------------------------------------

-- Not FORCE: the owner (the SECURITY DEFINER writers, the admin functions) sees every tenant's events;
-- applications see their context's.
alter table pyflows_audit.events enable row level security;
create policy tenant_isolation on pyflows_audit.events for select
    using (client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id());

revoke all on all tables in schema pyflows_audit from public;
revoke all on all functions in schema pyflows_audit from public;
grant select on pyflows_audit.events to pyflows_app;
