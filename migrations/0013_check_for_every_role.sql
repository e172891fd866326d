-- pyflows 0013: `pyflows check` works for every role that may use pyflows.
--
-- check read the migration table (yoyo's, the schema owner's) and pyflows.installed_sql, which only the
-- owner may read: any other login got 42501. Now installed_sql also lists the migrations applied
-- (migrate and rollback keep it current), and pyflows_app and pyflows_admin may read it: which sql/
-- definitions and migrations are installed is no tenant's data.
-- depends: 0012_delete_trigger_per_table

alter table pyflows.installed_sql add column migrations text[];

grant select on pyflows.installed_sql to pyflows_app, pyflows_admin;
