-- pyflows 0021 rollback: pyflows.raw_import_records is one plain table again (its default partition,
-- with every row, under its name), and the functions that converted it are gone.

drop trigger copy_rules on pyflows.raw_import_records_default;
alter table pyflows.raw_import_records_default drop constraint raw_import_records_default_tenant;
do $$ begin perform pyflows._unpartition('pyflows.raw_import_records'); end $$;
drop function pyflows._on_copy_raw_import_records();
drop function pyflows._check_partition_tenant(regclass);
drop function pyflows._row_of_another_tenant(uuid, uuid);
drop function pyflows._unpartition(regclass);
drop function pyflows._partition_for_copy(regclass);
drop function pyflows._restore_table_rules(text, jsonb);
drop function pyflows._referencing_keys(jsonb, boolean);
drop function pyflows._table_rules(regclass);
