-- pyflows 0004 rollback: the delete triggers, the audit tables and functions, the outbox columns.
-- The audit trail is dropped with them: roll back only a database whose history you can lose.
drop trigger enqueue_files on pyflows.data_imports;
drop trigger audit_delete on pyflows.asset_dependencies;
drop trigger audit_delete on pyflows.assets;
drop trigger audit_delete on pyflows.import_field_mappings;
drop trigger audit_delete on pyflows.raw_import_records;
drop trigger audit_delete on pyflows.data_imports;
drop trigger audit_delete on pyflows.discovery_flows;
drop trigger audit_delete on pyflows.engagements;
drop trigger audit_delete on pyflows.clients;

drop function pyflows_audit._enqueue_files();
drop function pyflows_audit._on_delete();
drop function pyflows_audit._own_event();
drop function pyflows_audit._statement_event(text, bigint, uuid, uuid, bigint, uuid);
drop function pyflows_audit._end_event();
drop function pyflows_audit._begin_event(text, uuid, text, jsonb, jsonb, boolean, jsonb);

drop table pyflows_audit.asset_dependencies;
drop table pyflows_audit.assets;
drop table pyflows_audit.import_field_mappings;
drop table pyflows_audit.raw_import_records;
drop table pyflows_audit.data_imports;
drop table pyflows_audit.discovery_flows;
drop table pyflows_audit.engagements;
drop table pyflows_audit.clients;
drop table pyflows_audit.events;

drop function pyflows_audit._guard_event_update();
drop function pyflows_audit._refuse_change();

drop index pyflows.file_cleanup_queue_event;
drop index pyflows.file_cleanup_queue_id;
alter table pyflows.file_cleanup_queue drop column event_id;
