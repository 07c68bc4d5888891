#!/bin/sh
# Start sshd in the foreground, logging to stderr; make the host keys it lacks first and print
# their fingerprints on the console, so that a user can check what ssh shows at first contact.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
key_dir=${SSH_HOST_KEY_DIR:-/run/ssh-host-keys}
key_types=${SSH_HOST_KEY_TYPES:-ed25519 ecdsa}

mkdir -p "$key_dir" && chmod 0700 "$key_dir" || exit 1
set --
for type in $key_types; do
    key="$key_dir/ssh_host_${type}_key"
    if [ ! -f "$key" ]; then
        ssh-keygen -q -t "$type" -N "" -C "" -f "$key" || { echo "sshd: cannot make a $type host key" >&2; exit 1; }
    fi
    ssh-keygen -l -f "$key.pub" | awk '{ print "sshd: host key " $2 " " $NF }' >/dev/console 2>/dev/null
    set -- "$@" -h "$key"
done
# the privilege separation directory Debian's sshd is built with
mkdir -p /run/sshd && chmod 0755 /run/sshd
exec /usr/sbin/sshd -D -e "$@"
