#!/bin/sh
# The image's entrypoint: picks the config when none is named, then runs astron-edge.
# The stack's own nginx.conf, mounted where its nginx service mounts it
# (/etc/nginx/nginx.conf), is served as it is (imported at every load and reload);
# otherwise the shipped TOML. `-c FILE` or ASTRON_EDGE_CONFIG still choose explicitly;
# ASTRON_EDGE_NGINX_CONF names another place to look for an nginx.conf.
nginx_conf=${ASTRON_EDGE_NGINX_CONF:-/etc/nginx/nginx.conf}
if [ -z "${ASTRON_EDGE_CONFIG:-}" ]; then
    if [ -f "$nginx_conf" ]; then
        ASTRON_EDGE_CONFIG=$nginx_conf
    else
        ASTRON_EDGE_CONFIG=/etc/astron-edge/astron-edge.toml
    fi
    export ASTRON_EDGE_CONFIG
fi
exec astron-edge "$@"
