-- pyflows 0008 rollback: TRUNCATE of tenant tables is no longer refused.
drop trigger refuse_truncate on pyflows.file_cleanup_queue;
drop trigger refuse_truncate on pyflows.asset_dependencies;
drop trigger refuse_truncate on pyflows.assets;
drop trigger refuse_truncate on pyflows.import_field_mappings;
drop trigger refuse_truncate on pyflows.raw_import_records;
drop trigger refuse_truncate on pyflows.data_imports;
drop trigger refuse_truncate on pyflows.discovery_flows;
drop trigger refuse_truncate on pyflows.engagements;
drop trigger refuse_truncate on pyflows.clients;
drop function pyflows_audit._refuse_truncate();
