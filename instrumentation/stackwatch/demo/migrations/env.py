"""Alembic environment of the demo: online migrations over the connection the caller passes.

``stackwatch.demo.schema`` builds the Alembic config in code and hands over a
synchronous psycopg connection, so there is no alembic.ini to keep in step.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from stackwatch.demo.models import Base

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as own_connection:
        context.configure(connection=own_connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
