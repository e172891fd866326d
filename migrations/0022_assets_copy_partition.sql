-- pyflows 0022: assets take COPY, as raw records do since migration 0021. pyflows.assets becomes a
-- partitioned table (by list of client_id) with the old table, and every row, as its DEFAULT
-- partition pyflows.assets_default: the parent takes the name, keys, policies, triggers, grants and
-- the foreign keys of the dependency edges that reference an asset; the partition has no row-level
-- security, and pyflows_app may only INSERT (or COPY) into it. A row of another tenant is refused
-- before any key sees it (PF401 without a context, PF403 in another; the CHECK constraint
-- assets_default_tenant, migration 0021), and rows of a flow being deleted are refused as through
-- the parent, by trigger (_refuse_rows_for_deleting_flows). The ids: the partition's id defaults to the
-- parent's identity sequence; begin_copy_assets (sql/080_bulk.sql) draws them beforehand, so that
-- the caller knows each asset's id before it builds the edges.
-- depends: 0021_records_copy_partition

do $$ begin perform pyflows._check_partition_tenant(pyflows._partition_for_copy('pyflows.assets')); end $$;

create trigger copy_rules after insert on pyflows.assets_default
    referencing new table as new_rows
    for each statement execute function pyflows._refuse_rows_for_deleting_flows();
