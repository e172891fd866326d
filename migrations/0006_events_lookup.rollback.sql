-- pyflows 0006 rollback: the index on pyflows_audit.events (txid) again, and the planner's defaults.
alter function pyflows_audit._statement_event(text, bigint, uuid, uuid, bigint, uuid) reset enable_seqscan;
alter function pyflows_audit._on_delete() reset enable_seqscan;
alter function pyflows_audit._own_event() reset enable_seqscan;
create index events_txid on pyflows_audit.events (txid);
