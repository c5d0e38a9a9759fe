"""PostgreSQL source: pgoutput logical replication read through psycopg 3."""
