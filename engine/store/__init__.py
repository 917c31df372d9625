"""PostgreSQL access (asyncpg): one module per table family."""
