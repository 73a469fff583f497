"""Alembic environment for the dsguard store.

Migrations run only programmatically, from :func:`dsguard.store.db.open_store`, on a
connection it has already opened, locked and put in a transaction (see ``db.py``); there is
no ``alembic.ini`` and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from dsguard.store.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "dsguard migrations run through dsguard.store.open_store(), not the alembic command line"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
