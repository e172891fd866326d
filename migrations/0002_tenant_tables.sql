-- pyflows 0002: tenants, the phase reference data, flows and everything a flow owns.
--
-- Every tenant table leads its keys with (client_id, engagement_id); every foreign key to a
-- flow-owned parent is composite, so a child can never point at another tenant's parent, and
-- every foreign key has an index leading with its columns (an unindexed referencing column makes
-- a cascade quadratic). The cascade map is asserted against the catalog by tests/test_schema.py.
-- depends: 0001_schemas_and_roles

create table pyflows.clients (
    id          uuid not null default gen_random_uuid(),
    name        text not null,
    created_at  timestamptz not null default now(),
    constraint clients_pkey primary key (id),
    constraint clients_name_check check (btrim(name) <> '' and char_length(name) <= 200)
);

create table pyflows.engagements (
    client_id   uuid not null,
    id          uuid not null default gen_random_uuid(),
    name        text not null,
    created_at  timestamptz not null default now(),
    constraint engagements_pkey primary key (client_id, id),
    constraint engagements_client_fkey foreign key (client_id)
        references pyflows.clients (id) on delete cascade,
    constraint engagements_name_check check (btrim(name) <> '' and char_length(name) <= 200)
);

create table pyflows.phases (
    phase      text not null,
    position   smallint not null,
    title      text not null,
    next_step  text not null,
    constraint phases_pkey primary key (phase),
    constraint phases_position_key unique (position),
    constraint phases_position_check check (position > 0)
);

insert into pyflows.phases (phase, position, title, next_step) values
    ('data_import',         1, 'Data import',         'Upload the CMDB export and wait for its records to be read.'),
    ('data_validation',     2, 'Data validation',     'Review the validation report and fix or accept the rejected rows.'),
    ('field_mapping',       3, 'Field mapping',       'Confirm how each source field maps to an asset attribute.'),
    ('data_cleansing',      4, 'Data cleansing',      'Resolve duplicates and fill in missing values.'),
    ('asset_inventory',     5, 'Asset inventory',     'Review the assets built from the cleansed records.'),
    ('dependency_analysis', 6, 'Dependency analysis', 'Confirm the dependencies found between assets.'),
    ('tech_debt_analysis',  7, 'Tech debt analysis',  'Review the technical-debt findings and finish the flow.');

create table pyflows.discovery_flows (
    client_id            uuid not null,
    engagement_id        uuid not null,
    id                   uuid not null default gen_random_uuid(),
    name                 text not null,
    status               text not null default 'initialized',
    current_phase        text default 'data_import',
    phases_completed     text[] not null default '{}',
    progress_percentage  numeric(5, 2) not null,
    created_by           text,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    last_activity_at     timestamptz not null default now(),
    heartbeat_at         timestamptz,
    completed_at         timestamptz,
    error                jsonb,
    agent_insights       jsonb not null default '[]',
    constraint discovery_flows_pkey primary key (client_id, engagement_id, id),
    constraint discovery_flows_engagement_fkey foreign key (client_id, engagement_id)
        references pyflows.engagements (client_id, id) on delete cascade,
    constraint discovery_flows_name_check check (btrim(name) <> '' and char_length(name) <= 200),
    constraint discovery_flows_status_check check (status in (
        'initialized', 'running', 'paused', 'waiting_for_user', 'failed',
        'completed', 'cancelled', 'deleting')),
    constraint discovery_flows_progress_check check (progress_percentage between 0 and 100),
    constraint discovery_flows_agent_insights_check check (jsonb_typeof(agent_insights) = 'array')
);

comment on column pyflows.discovery_flows.progress_percentage is
    'derived from phases_completed by trigger discovery_flows_rules; never written independently';

-- The rule pyflows exists for: at most one incomplete flow per (client, engagement).
-- The list of incomplete statuses is repeated in sql/ and in docs; tests/test_schema.py keeps them equal.
create unique index discovery_flows_one_incomplete
    on pyflows.discovery_flows (client_id, engagement_id)
    where status in ('initialized', 'running', 'paused', 'waiting_for_user', 'failed');

create index discovery_flows_last_activity
    on pyflows.discovery_flows (client_id, engagement_id, last_activity_at desc, id);

-- The rules every write to a flow row obeys, whoever writes it (the API or a plain UPDATE):
--  * current_phase and phases_completed name known phases (PF422); phases_completed is ordered and
--    de-duplicated, and progress_percentage is derived from it (writing it by hand is PF422);
--  * status changes follow the lifecycle (PF422 otherwise): an incomplete flow may move to another
--    incomplete status (never back to initialized), to cancelled, or to completed once every phase
--    is complete; any flow may move to deleting; completed, cancelled and deleting flows move nowhere
--    else. A completed flow has no current phase and a completed_at;
--  * updated_at is touched on every update.
create function pyflows._flow_row_rules()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows
as $$
declare
    c_incomplete constant text[] := array['initialized', 'running', 'paused', 'waiting_for_user', 'failed'];
    v_unknown   text;
    v_total     integer;
    v_completed text[];
    v_progress  numeric(5, 2);
begin
    select p into v_unknown
      from unnest(new.phases_completed) as p
     where p is null or not exists (select from pyflows.phases where phase = p)
     limit 1;
    if found then
        raise exception 'unknown phase % in phases_completed', coalesce(quote_literal(v_unknown), 'NULL')
            using errcode = 'PF422', hint = 'The phases are listed in pyflows.phases.';
    end if;
    if new.current_phase is not null
       and not exists (select from pyflows.phases where phase = new.current_phase) then
        raise exception 'unknown phase % for current_phase', quote_literal(new.current_phase)
            using errcode = 'PF422', hint = 'The phases are listed in pyflows.phases.';
    end if;

    select count(*) into v_total from pyflows.phases;
    if v_total = 0 then
        raise exception 'pyflows.phases is empty' using errcode = 'PF422';
    end if;
    select coalesce(array_agg(ph.phase order by ph.position), '{}')
      into v_completed
      from pyflows.phases as ph
     where ph.phase = any (new.phases_completed);
    v_progress := round(100.0 * cardinality(v_completed) / v_total, 2);

    if tg_op = 'UPDATE' then
        if new.progress_percentage is distinct from old.progress_percentage then
            raise exception 'progress_percentage is derived from phases_completed and cannot be written'
                using errcode = 'PF422';
        end if;
        if new.status <> old.status and not (
               new.status = 'deleting'
            or (old.status = any (c_incomplete)
                and (new.status = any (c_incomplete) and new.status <> 'initialized'
                     or new.status in ('cancelled', 'completed')))
        ) then
            raise exception 'a flow cannot go from % to %', old.status, new.status
                using errcode = 'PF422',
                      detail = json_build_object('from', old.status, 'to', new.status)::text;
        end if;
        new.updated_at := now();
    elsif new.progress_percentage is not null and new.progress_percentage <> v_progress then
        raise exception 'progress_percentage is derived from phases_completed and cannot be written'
            using errcode = 'PF422';
    end if;

    if new.status = 'completed' then
        if cardinality(v_completed) < v_total then
            raise exception 'a flow completes only when every phase is complete (% of % are)',
                cardinality(v_completed), v_total
                using errcode = 'PF422';
        end if;
        new.current_phase := null;
        new.completed_at := coalesce(new.completed_at, now());
    end if;

    new.phases_completed := v_completed;
    new.progress_percentage := v_progress;
    return new;
end;
$$;

create trigger discovery_flows_rules
    before insert or update on pyflows.discovery_flows
    for each row execute function pyflows._flow_row_rules();

create table pyflows.data_imports (
    client_id      uuid not null,
    engagement_id  uuid not null,
    id             uuid not null default gen_random_uuid(),
    flow_id        uuid not null,
    filename       text not null,
    storage_uri    text not null,
    byte_size      bigint not null,
    status         text not null default 'uploaded',
    record_count   bigint not null default 0,
    imported_by    text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    constraint data_imports_pkey primary key (client_id, engagement_id, id),
    constraint data_imports_flow_fkey foreign key (client_id, engagement_id, flow_id)
        references pyflows.discovery_flows (client_id, engagement_id, id) on delete cascade,
    constraint data_imports_filename_check check (btrim(filename) <> '' and char_length(filename) <= 1024),
    constraint data_imports_storage_uri_check check (btrim(storage_uri) <> ''),
    constraint data_imports_byte_size_check check (byte_size >= 0),
    constraint data_imports_record_count_check check (record_count >= 0),
    constraint data_imports_status_check check (status in ('uploaded', 'processing', 'imported', 'failed'))
);

create index data_imports_flow on pyflows.data_imports (client_id, engagement_id, flow_id);

create table pyflows.raw_import_records (
    client_id      uuid not null,
    engagement_id  uuid not null,
    id             bigint generated by default as identity,
    import_id      uuid not null,
    row_number     integer not null,
    data           jsonb not null,
    created_at     timestamptz not null default now(),
    constraint raw_import_records_pkey primary key (client_id, engagement_id, id),
    constraint raw_import_records_import_fkey foreign key (client_id, engagement_id, import_id)
        references pyflows.data_imports (client_id, engagement_id, id) on delete cascade,
    constraint raw_import_records_row_number_check check (row_number > 0),
    -- one row per position in an import; also the index behind the foreign key
    constraint raw_import_records_import_row_key unique (client_id, engagement_id, import_id, row_number)
);

create table pyflows.import_field_mappings (
    client_id         uuid not null,
    engagement_id     uuid not null,
    id                bigint generated by default as identity,
    import_id         uuid not null,
    source_field      text not null,
    target_attribute  text,
    confidence        numeric(4, 3),
    status            text not null default 'suggested',
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    constraint import_field_mappings_pkey primary key (client_id, engagement_id, id),
    constraint import_field_mappings_import_fkey foreign key (client_id, engagement_id, import_id)
        references pyflows.data_imports (client_id, engagement_id, id) on delete cascade,
    constraint import_field_mappings_source_field_check check (btrim(source_field) <> ''),
    constraint import_field_mappings_confidence_check check (confidence between 0 and 1),
    constraint import_field_mappings_status_check check (status in ('suggested', 'approved', 'rejected')),
    -- one mapping per source field of an import; also the index behind the foreign key
    constraint import_field_mappings_import_field_key unique (client_id, engagement_id, import_id, source_field)
);

create table pyflows.assets (
    client_id         uuid not null,
    engagement_id     uuid not null,
    id                bigint generated by default as identity,
    flow_id           uuid not null,
    name              text not null,
    asset_type        text not null,
    hostname          text,
    ip_address        inet,
    operating_system  text,
    attributes        jsonb not null default '{}',
    created_at        timestamptz not null default now(),
    constraint assets_pkey primary key (client_id, engagement_id, id),
    constraint assets_flow_fkey foreign key (client_id, engagement_id, flow_id)
        references pyflows.discovery_flows (client_id, engagement_id, id) on delete cascade,
    constraint assets_name_check check (btrim(name) <> ''),
    constraint assets_asset_type_check check (btrim(asset_type) <> ''),
    constraint assets_attributes_check check (jsonb_typeof(attributes) = 'object')
);

create index assets_flow on pyflows.assets (client_id, engagement_id, flow_id);

create table pyflows.asset_dependencies (
    client_id         uuid not null,
    engagement_id     uuid not null,
    id                bigint generated by default as identity,
    flow_id           uuid not null,
    source_asset_id   bigint not null,
    target_asset_id   bigint not null,
    dependency_type   text not null,
    created_at        timestamptz not null default now(),
    constraint asset_dependencies_pkey primary key (client_id, engagement_id, id),
    constraint asset_dependencies_flow_fkey foreign key (client_id, engagement_id, flow_id)
        references pyflows.discovery_flows (client_id, engagement_id, id) on delete cascade,
    constraint asset_dependencies_source_fkey foreign key (client_id, engagement_id, source_asset_id)
        references pyflows.assets (client_id, engagement_id, id) on delete cascade,
    constraint asset_dependencies_target_fkey foreign key (client_id, engagement_id, target_asset_id)
        references pyflows.assets (client_id, engagement_id, id) on delete cascade,
    constraint asset_dependencies_not_self check (source_asset_id <> target_asset_id),
    constraint asset_dependencies_type_check check (btrim(dependency_type) <> ''),
    -- one edge of a type between two assets; also the index behind the source foreign key
    constraint asset_dependencies_edge_key
        unique (client_id, engagement_id, source_asset_id, target_asset_id, dependency_type)
);

create index asset_dependencies_flow on pyflows.asset_dependencies (client_id, engagement_id, flow_id);

create index asset_dependencies_target on pyflows.asset_dependencies (client_id, engagement_id, target_asset_id);

-- Storage objects to remove once the rows that referenced them are gone (an outbox). No foreign
-- key: an entry must outlive the import it came from.
create table pyflows.file_cleanup_queue (
    client_id      uuid not null,
    engagement_id  uuid not null,
    id             bigint generated by default as identity,
    storage_uri    text not null,
    flow_id        uuid,
    import_id      uuid,
    enqueued_at    timestamptz not null default now(),
    attempts       integer not null default 0,
    lease_until    timestamptz,
    last_error     text,
    done_at        timestamptz,
    constraint file_cleanup_queue_pkey primary key (client_id, engagement_id, id),
    constraint file_cleanup_queue_attempts_check check (attempts >= 0)
);

create index file_cleanup_queue_pending on pyflows.file_cleanup_queue (enqueued_at) where done_at is null;
