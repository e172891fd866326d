-- pyflows 0011 rollback: keys and foreign-key indexes leading with (client_id, engagement_id) again.

alter table pyflows.raw_import_records drop constraint raw_import_records_import_fkey;
alter table pyflows.import_field_mappings drop constraint import_field_mappings_import_fkey;
alter table pyflows.asset_dependencies drop constraint asset_dependencies_source_fkey;
alter table pyflows.asset_dependencies drop constraint asset_dependencies_target_fkey;

alter table pyflows.data_imports drop constraint data_imports_pkey;
alter table pyflows.data_imports add constraint data_imports_pkey primary key (client_id, engagement_id, id);
alter table pyflows.raw_import_records drop constraint raw_import_records_pkey;
alter table pyflows.raw_import_records add constraint raw_import_records_pkey primary key (client_id, engagement_id, id);
alter table pyflows.import_field_mappings drop constraint import_field_mappings_pkey;
alter table pyflows.import_field_mappings add constraint import_field_mappings_pkey primary key (client_id, engagement_id, id);
alter table pyflows.assets drop constraint assets_pkey;
alter table pyflows.assets add constraint assets_pkey primary key (client_id, engagement_id, id);
alter table pyflows.asset_dependencies drop constraint asset_dependencies_pkey;
alter table pyflows.asset_dependencies add constraint asset_dependencies_pkey primary key (client_id, engagement_id, id);

alter table pyflows.raw_import_records drop constraint raw_import_records_import_row_key;
alter table pyflows.raw_import_records
    add constraint raw_import_records_import_row_key unique (client_id, engagement_id, import_id, row_number);
alter table pyflows.import_field_mappings drop constraint import_field_mappings_import_field_key;
alter table pyflows.import_field_mappings
    add constraint import_field_mappings_import_field_key unique (client_id, engagement_id, import_id, source_field);
alter table pyflows.asset_dependencies drop constraint asset_dependencies_edge_key;
alter table pyflows.asset_dependencies
    add constraint asset_dependencies_edge_key
        unique (client_id, engagement_id, source_asset_id, target_asset_id, dependency_type);

drop index pyflows.data_imports_flow;
create index data_imports_flow on pyflows.data_imports (client_id, engagement_id, flow_id);
drop index pyflows.assets_flow;
create index assets_flow on pyflows.assets (client_id, engagement_id, flow_id);
drop index pyflows.asset_dependencies_flow;
create index asset_dependencies_flow on pyflows.asset_dependencies (client_id, engagement_id, flow_id);
drop index pyflows.asset_dependencies_target;
create index asset_dependencies_target on pyflows.asset_dependencies (client_id, engagement_id, target_asset_id);
drop index pyflows.discovery_flows_last_activity;
create index discovery_flows_last_activity
    on pyflows.discovery_flows (client_id, engagement_id, last_activity_at desc, id);

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
