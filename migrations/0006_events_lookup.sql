-- pyflows 0006: the delete triggers find their event through the primary key, however the events
-- table has grown inside the transaction.
--
-- pyflows_audit._own_event() looks an event up by id and checks that it belongs to the current
-- transaction (txid); _on_delete() and _statement_event() then read and update it by id. Their plans
-- are made once and kept for the statement (SQL function) or the session (PL/pgSQL), so a plan made
-- while events fitted on one page (a sequential scan) was still used after a batch had written
-- thousands of event versions in the same transaction: deleting N flows in one delete_flows call cost
-- O(N²) (measured: 1,000 small flows 4.7 s instead of 1.3 s). Two causes, two changes:
-- - the index on txid goes: every event of a transaction has the same txid, so a plan through it reads
--   all of them; no pyflows query looks events up by txid (a DBA can filter on txid within a time
--   range through events_tenant);
-- - the three functions plan without sequential scans, so their lookups by id always use the primary
--   key. None of them reads anything else from a table (the deleted rows come from a transition table).
-- depends: 0005_purge

drop index pyflows_audit.events_txid;
alter function pyflows_audit._own_event() set enable_seqscan = off;
alter function pyflows_audit._on_delete() set enable_seqscan = off;
alter function pyflows_audit._statement_event(text, bigint, uuid, uuid, bigint, uuid) set enable_seqscan = off;
