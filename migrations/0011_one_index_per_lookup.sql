-- pyflows 0011: each lookup a foreign key makes has exactly one index that can serve it, so the plan
-- is right whatever the statistics say (or do not yet say).
--
-- Without statistics — a new install, autovacuum off, or rows loaded in the same transaction — the
-- planner guesses that `client_id = $1 and engagement_id = $2` selects almost nothing, when it
-- selects the tenant's every row. Two indexes that both lead with (client_id, engagement_id) then
-- look equally good for a foreign-key lookup, and the planner could take the wrong one: every check
-- of a dependency edge read the tenant's assets through assets_flow with `id` as a filter (20k edges:
-- 24 s, 80k: over 300 s), and a cascade could read through the primary key with the flow as a filter.
-- Now the primary keys of the flow-owned tables lead with `id` and every foreign-key index leads with
-- its own column, each followed by (client_id, engagement_id) (then, for the unique keys, the rest):
-- a lookup by id can use only the primary key, a lookup by flow, import or asset only its own index. The keys still contain the tenant
-- (a child cannot point at another tenant's parent, and a distributed engine can still co-locate them).
-- discovery_flows keeps its primary key (client_id, engagement_id, id), which both the lookups by id
-- and the cascade from engagements use; its listing index becomes partial (status <> 'deleting', as
-- every listing filters), so that the lookups by id cannot pick it.
-- Existing installations: the indexes are rebuilt and the foreign keys validated again, in one
-- transaction, in time proportional to the tables.
-- depends: 0010_hardening

alter table pyflows.raw_import_records drop constraint raw_import_records_import_fkey;
alter table pyflows.import_field_mappings drop constraint import_field_mappings_import_fkey;
alter table pyflows.asset_dependencies drop constraint asset_dependencies_source_fkey;
alter table pyflows.asset_dependencies drop constraint asset_dependencies_target_fkey;

alter table pyflows.data_imports drop constraint data_imports_pkey;
alter table pyflows.data_imports add constraint data_imports_pkey primary key (id, client_id, engagement_id);
alter table pyflows.raw_import_records drop constraint raw_import_records_pkey;
alter table pyflows.raw_import_records add constraint raw_import_records_pkey primary key (id, client_id, engagement_id);
alter table pyflows.import_field_mappings drop constraint import_field_mappings_pkey;
alter table pyflows.import_field_mappings
    add constraint import_field_mappings_pkey primary key (id, client_id, engagement_id);
alter table pyflows.assets drop constraint assets_pkey;
alter table pyflows.assets add constraint assets_pkey primary key (id, client_id, engagement_id);
alter table pyflows.asset_dependencies drop constraint asset_dependencies_pkey;
alter table pyflows.asset_dependencies add constraint asset_dependencies_pkey primary key (id, client_id, engagement_id);

alter table pyflows.raw_import_records drop constraint raw_import_records_import_row_key;
alter table pyflows.raw_import_records
    add constraint raw_import_records_import_row_key unique (import_id, client_id, engagement_id, row_number);
alter table pyflows.import_field_mappings drop constraint import_field_mappings_import_field_key;
alter table pyflows.import_field_mappings
    add constraint import_field_mappings_import_field_key unique (import_id, client_id, engagement_id, source_field);
alter table pyflows.asset_dependencies drop constraint asset_dependencies_edge_key;
alter table pyflows.asset_dependencies
    add constraint asset_dependencies_edge_key
        unique (source_asset_id, client_id, engagement_id, target_asset_id, dependency_type);

drop index pyflows.data_imports_flow;
create index data_imports_flow on pyflows.data_imports (flow_id, client_id, engagement_id);
drop index pyflows.assets_flow;
create index assets_flow on pyflows.assets (flow_id, client_id, engagement_id);
drop index pyflows.asset_dependencies_flow;
create index asset_dependencies_flow on pyflows.asset_dependencies (flow_id, client_id, engagement_id);
drop index pyflows.asset_dependencies_target;
create index asset_dependencies_target on pyflows.asset_dependencies (target_asset_id, client_id, engagement_id);
drop index pyflows.discovery_flows_last_activity;
create index discovery_flows_last_activity
    on pyflows.discovery_flows (client_id, engagement_id, last_activity_at desc, id) where status <> 'deleting';

alter table pyflows.raw_import_records add constraint raw_import_records_import_fkey
    foreign key (client_id, engagement_id, import_id) references pyflows.data_imports (client_id, engagement_id, id)
    on delete cascade;
alter table pyflows.import_field_mappings add constraint import_field_mappings_import_fkey
    foreign key (client_id, engagement_id, import_id) references pyflows.data_imports (client_id, engagement_id, id)
    on delete cascade;
alter table pyflows.asset_dependencies add constraint asset_dependencies_source_fkey
    foreign key (client_id, engagement_id, source_asset_id) references pyflows.assets (client_id, engagement_id, id)
    on delete cascade;
alter table pyflows.asset_dependencies add constraint asset_dependencies_target_fkey
    foreign key (client_id, engagement_id, target_asset_id) references pyflows.assets (client_id, engagement_id, id)
    on delete cascade;
