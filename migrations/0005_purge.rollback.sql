-- pyflows 0005 rollback: writers are no longer refused on flows being purged.
drop trigger refuse_deleting_flow on pyflows.asset_dependencies;
drop trigger refuse_deleting_flow on pyflows.assets;
drop trigger refuse_deleting_flow on pyflows.import_field_mappings;
drop trigger refuse_deleting_flow on pyflows.raw_import_records;
drop trigger refuse_deleting_flow on pyflows.data_imports;
drop function pyflows._refuse_rows_for_deleting_flows();
