-- pyflows 0022 rollback: pyflows.assets is one plain table again (its default partition, with every
-- row, under its name), and the dependency edges reference it.

drop trigger copy_rules on pyflows.assets_default;
alter table pyflows.assets_default drop constraint assets_default_tenant;
do $$ begin perform pyflows._unpartition('pyflows.assets'); end $$;
