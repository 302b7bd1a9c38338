#!/bin/sh
# Start one Redis data node or Sentinel of deploy/compose.yaml.
#   redis-start.sh primary|replica|sentinel NAME
# The password comes from the compose secret /run/secrets/redis_password and goes into a runtime
# config in /data (mode 0600), never onto a command line. That file is written only when missing:
# after a failover the Sentinels rewrite it (who replicates whom), and a restart must keep that.
# docker-entrypoint.sh (the redis image's) then hands /data to the redis user and drops root.
set -eu
role=$1
name=$2
password=$(cat /run/secrets/redis_password)
umask 077
case "$role" in
  primary | replica)
    conf=/data/redis-runtime.conf
    if [ ! -f "$conf" ]; then
      cp /etc/redis/redis.conf "$conf.new"
      printf 'requirepass %s\nmasterauth %s\nreplica-announce-ip %s\n' "$password" "$password" "$name" >>"$conf.new"
      if [ "$role" = replica ]; then
        echo 'replicaof redis-primary 6379' >>"$conf.new"
      fi
      mv "$conf.new" "$conf"
    fi
    exec docker-entrypoint.sh redis-server "$conf"
    ;;
  sentinel)
    conf=/data/sentinel.conf
    if [ ! -f "$conf" ]; then
      cp /etc/redis/sentinel.conf "$conf.new"
      printf 'sentinel auth-pass gateway %s\nrequirepass %s\nsentinel sentinel-pass %s\nsentinel announce-ip %s\n' \
        "$password" "$password" "$password" "$name" >>"$conf.new"
      mv "$conf.new" "$conf"
    fi
    exec docker-entrypoint.sh redis-server "$conf" --sentinel
    ;;
  *)
    echo "usage: redis-start.sh primary|replica|sentinel NAME" >&2
    exit 2
    ;;
esac
