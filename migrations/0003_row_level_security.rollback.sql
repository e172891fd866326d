-- pyflows 0003 rollback: grants, policies and the context helpers. The role membership
-- pyflows_admin -> pyflows_app is cluster-wide and stays, like the roles themselves.
revoke all on all tables in schema pyflows from pyflows_app;

revoke all on all functions in schema pyflows from pyflows_app;

drop policy tenant_isolation on pyflows.file_cleanup_queue;
alter table pyflows.file_cleanup_queue no force row level security;
alter table pyflows.file_cleanup_queue disable row level security;

drop policy tenant_isolation on pyflows.asset_dependencies;
alter table pyflows.asset_dependencies no force row level security;
alter table pyflows.asset_dependencies disable row level security;

drop policy tenant_isolation on pyflows.assets;
alter table pyflows.assets no force row level security;
alter table pyflows.assets disable row level security;

drop policy tenant_isolation on pyflows.import_field_mappings;
alter table pyflows.import_field_mappings no force row level security;
alter table pyflows.import_field_mappings disable row level security;

drop policy tenant_isolation on pyflows.raw_import_records;
alter table pyflows.raw_import_records no force row level security;
alter table pyflows.raw_import_records disable row level security;

drop policy tenant_isolation on pyflows.data_imports;
alter table pyflows.data_imports no force row level security;
alter table pyflows.data_imports disable row level security;

drop policy tenant_isolation on pyflows.discovery_flows;
alter table pyflows.discovery_flows no force row level security;
alter table pyflows.discovery_flows disable row level security;

drop policy tenant_isolation on pyflows.engagements;
alter table pyflows.engagements no force row level security;
alter table pyflows.engagements disable row level security;

drop policy tenant_isolation on pyflows.clients;
alter table pyflows.clients no force row level security;
alter table pyflows.clients disable row level security;

drop function pyflows.current_actor();

drop function pyflows.current_engagement_id();

drop function pyflows.current_client_id();
