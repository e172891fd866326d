-- pyflows 0001 rollback: drop both schemas and everything in them, including the repeatable
-- definitions from sql/. The roles pyflows_app and pyflows_admin stay: they are cluster-wide and
-- other databases on this server may still use them.
drop schema pyflows_audit cascade;

drop schema pyflows cascade;
