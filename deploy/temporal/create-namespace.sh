#!/bin/sh
# The namespace and the search attributes the workflows set, once the server answers.
# SEARCH_ATTRIBUTES holds `Name=Type` pairs; one that exists already is left alone.
set -eu
: "${TEMPORAL_ADDRESS:?}" "${NAMESPACE:?}" "${SEARCH_ATTRIBUTES:?}"

# A new namespace reaches the server's cache a few seconds after it is created.
retry() {
    attempt=1
    until "$@"; do
        [ "$attempt" -lt 60 ] || { echo "gave up after 60 tries: $*" >&2; return 1; }
        attempt=$((attempt + 1))
        sleep 2
    done
}

retry temporal operator cluster health >/dev/null
if ! temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
    retry temporal operator namespace create --namespace "$NAMESPACE"
fi

retry temporal operator search-attribute list --namespace "$NAMESPACE" >/dev/null 2>&1
existing=$(temporal operator search-attribute list --namespace "$NAMESPACE")
for pair in $SEARCH_ATTRIBUTES; do
    name=${pair%%=*}
    if echo "$existing" | grep -qw "$name"; then
        echo "search attribute $name exists"
    else
        retry temporal operator search-attribute create --namespace "$NAMESPACE" \
            --name "$name" --type "${pair#*=}"
    fi
done
