#!/bin/sh
# Temporal's two databases on the compose PostgreSQL, with temporal-sql-tool (admin-tools image).
# A database that already has a schema is only brought up to date, so this runs at every `up`.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
SCHEMAS=/etc/temporal/schema/postgresql/v12

setup() {  # database, schema directory
    sql="temporal-sql-tool --plugin postgres12 --ep $POSTGRES_SEEDS -p ${DB_PORT:-5432} -u $POSTGRES_USER --db $1"
    if $sql update-schema -d "$2"; then
        echo "database $1 is up to date"
        return
    fi
    # No schema yet. The database itself may exist: a first run stopped after creating it.
    $sql create || echo "database $1 exists; setting up its schema"
    $sql setup-schema -v 0.0
    $sql update-schema -d "$2"
    echo "database $1 created"
}

setup temporal "$SCHEMAS/temporal/versioned"
setup temporal_visibility "$SCHEMAS/visibility/versioned"
