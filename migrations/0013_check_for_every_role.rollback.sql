-- pyflows 0013 rollback: installed_sql for the owner only, without the list of migrations.

revoke select on pyflows.installed_sql from pyflows_app, pyflows_admin;

alter table pyflows.installed_sql drop column migrations;
