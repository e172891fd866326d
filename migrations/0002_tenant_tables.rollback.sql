-- pyflows 0002 rollback: drop the tables children first, then the trigger function.
drop table pyflows.file_cleanup_queue;

drop table pyflows.asset_dependencies;

drop table pyflows.assets;

drop table pyflows.import_field_mappings;

drop table pyflows.raw_import_records;

drop table pyflows.data_imports;

drop table pyflows.discovery_flows;

drop function pyflows._flow_row_rules();

drop table pyflows.phases;

drop table pyflows.engagements;

drop table pyflows.clients;
