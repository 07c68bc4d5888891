#!/bin/sh
# linuxkit-py/metadata: LinuxKit's metadata package (pkg/metadata) in busybox sh, with jq for JSON.
#   metadata [-v] [PROVIDER...]    PROVIDER: aws gcp hetzner openstack scaleway vultr digitalocean
#                                  equinixmetal metaldata vmware cdrom file=PATH (default: all but file=,
#                                  LinuxKit's order). Network providers are tried first, then CD-ROMs,
#                                  then files; the first that answers writes /run/config (docs/metadata.md).
# Every request is bounded (METADATA_TIMEOUT seconds, default 2; user-data METADATA_DATA_TIMEOUT, 10),
# an address where no HTTP server answers is given up after two tries (the providers there skipped), and
# whatever a provider sends is capped (METADATA_MAX_BYTES, default 4 MiB): hostile data is refused with a
# line saying so.
PATH=/usr/bin:/bin:/usr/sbin:/sbin
CONFIG=/run/config
WORK=/tmp/metadata
TIMEOUT=${METADATA_TIMEOUT:-2}
DATA_TIMEOUT=${METADATA_DATA_TIMEOUT:-10}
MAX_BYTES=${METADATA_MAX_BYTES:-4194304}
MAX_ENTRIES=${METADATA_MAX_ENTRIES:-1000}
SMALL_BYTES=65536                      # one metadata value (hostname, address, keys)
AWS=169.254.169.254                    # also OpenStack, Hetzner, DigitalOcean, Vultr and GCP's address
SCALEWAY=169.254.42.42
DEFAULT="aws gcp hetzner openstack scaleway vultr digitalocean equinixmetal metaldata vmware cdrom"
VERBOSE=
AWS_TOKEN=

say() { echo "$*"; }
debug() { [ -z "$VERBOSE" ] || echo "debug: $*"; }
# A value as JSON (quotes, control characters escaped) to print it safely: at most 200 bytes of it.
shown() { head -c 200 "$1" | jq -Rs . 2>/dev/null || echo '"?"'; }

# -- HTTP -------------------------------------------------------------------------------------------

# check ADDR: does an HTTP server answer on ADDR port 80 (two tries of TIMEOUT seconds)? The answer
# goes to $WORK/up.ADDR or down.ADDR; main starts one check per address at once, in the background.
check() {
    for try in 1 2; do
        answer=$( (printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" | timeout "$TIMEOUT" nc "$1" 80 | head -c 5) 2>/dev/null)
        if [ "$answer" = HTTP/ ]; then : >"$WORK/up.$1"; return 0; fi
        debug "$1:80: no answer (try $try)"
    done
    : >"$WORK/down.$1"; return 1
}

# reachable ADDR: the answer of ADDR's check, waiting for it (so providers elsewhere do not wait).
reachable() {
    while :; do
        [ -f "$WORK/up.$1" ] && return 0
        [ -f "$WORK/down.$1" ] && return 1
        sleep 0.1
    done
}

# capped OUT MAX: stdin to OUT, status 3 (and OUT removed) when it is more than MAX bytes.
capped() {
    head -c "$(($2 + 1))" >"$1.part"
    if [ "$(wc -c <"$1.part")" -gt "$2" ]; then rm -f "$1.part"; return 3; fi
    mv -f "$1.part" "$1"
}

# get URL OUT [MAX [SECONDS]] [-- HEADER...]: GET URL into OUT; status 0 on a 200 answer.
get() {
    local url out max secs status
    url=$1 out=$2 max=${3:-$SMALL_BYTES} secs=${4:-$TIMEOUT}
    shift 2; [ $# -gt 0 ] && shift; [ $# -gt 0 ] && shift; [ "$1" = -- ] && shift
    set -o pipefail
    # busybox wget: no -T (it crashes Debian's 1.35 static build); timeout bounds connect and transfer
    { timeout "$secs" wget -q -O - "$@" "$url" | capped "$out" "$max"; } 2>/dev/null
    status=$?
    set +o pipefail
    case $status in
        0|1) ;;  # 1: an HTTP error (404 for what the cloud does not have) or no connection
        3) say "$url: more than $max bytes: refused" ;;
        *) say "$url: no complete answer within $secs s: refused" ;;
    esac
    [ "$status" = 0 ] || { rm -f "$out"; debug "GET $url: status $status"; }
    return "$status"
}

# raw ADDR OUT SECONDS [-p PORT] < REQUEST: one HTTP/1.0 exchange through nc; a 200 answer's body in OUT.
raw() {
    local addr out secs length
    addr=$1 out=$2 secs=$3; shift 3
    { timeout "$secs" nc "$@" "$addr" 80 | capped "$WORK/raw" "$MAX_BYTES"; } 2>/dev/null || return 2
    [ -s "$WORK/raw" ] || return 1  # no connection (or no answer at all)
    # the header's length in bytes: the lines up to the first empty one (busybox awk counts bytes)
    length=$(awk 'NR == 1 && $2 != "200" { print -1; exit } { n += length($0) + 1 } /^\r?$/ { print n; exit }' \
        "$WORK/raw")
    case $length in ''|-1) rm -f "$WORK/raw"; return 2 ;; esac
    tail -c "+$((length + 1))" "$WORK/raw" >"$out"; rm -f "$WORK/raw"
}

# -- /run/config --------------------------------------------------------------------------------------

# replace FILE TARGET: rename FILE to TARGET; a symlink at TARGET is removed first (mv would follow a
# symlink to a directory and move FILE into that directory).
replace() {
    [ -L "$2" ] && rm -f "$2"
    mv -f "$1" "$2"
}

# put NAME FILE [MODE]: FILE becomes /run/config/NAME (replacing a symlink there, never following it).
put() {
    if [ -d "$CONFIG/$1" ] && [ ! -L "$CONFIG/$1" ]; then say "$1: a directory is in the way: not written"; return 1; fi
    chmod "${3:-644}" "$2" && replace "$2" "$CONFIG/$1"
}

# meta URL NAME [HEADER...]: a metadata value into /run/config/NAME (LinuxKit's files: instance_id, ...).
meta() {
    local url name
    url=$1 name=$2; shift 2
    if get "$url" "$WORK/value" "$SMALL_BYTES" "$TIMEOUT" -- "$@"; then put "$name" "$WORK/value"
    else debug "no $name"; fi
}

# keys FILE: FILE becomes /run/config/ssh/authorized_keys (0600, directory 0755).
keys() {
    if [ -L "$CONFIG/ssh" ] || { [ -e "$CONFIG/ssh" ] && [ ! -d "$CONFIG/ssh" ]; }; then
        say "ssh: not a directory: keys not written"; return 1
    fi
    mkdir -p "$CONFIG/ssh" && chmod 755 "$CONFIG/ssh" && put ssh/authorized_keys "$1" 600
}

# -- providers ---------------------------------------------------------------------------------------
# Each provider_X prints nothing, writes its files into /run/config and leaves its user-data (if any)
# in $WORK/userdata; status 0 when it answered (LinuxKit's Probe), 1 when it is not there.

aws_token() {
    # IMDSv2: a session token first (PUT); an IMDSv1 server (or a proxy refusing PUT) gets plain GETs.
    AWS_TOKEN=
    printf 'PUT /latest/api/token HTTP/1.0\r\nHost: %s\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n' \
        "$AWS" | raw "$AWS" "$WORK/token" "$TIMEOUT" || { debug "AWS: no IMDSv2 token: IMDSv1"; return 0; }
    token=$(head -c 200 "$WORK/token")
    case $token in
        ''|*[!A-Za-z0-9_=+/.-]*) debug "AWS: unusable token: IMDSv1" ;;
        *) AWS_TOKEN=$token ;;
    esac
}

# ec2_like: the EC2-style tree LinuxKit reads for AWS, OpenStack and Hetzner ($provider says which).
ec2_like() {
    base=http://$AWS/latest/meta-data/
    set --
    [ -n "$AWS_TOKEN" ] && set -- --header "X-aws-ec2-metadata-token: $AWS_TOKEN"
    get "${base}hostname" "$WORK/hostname" "$SMALL_BYTES" "$TIMEOUT" -- "$@" || return 1
    put hostname "$WORK/hostname"
    meta "${base}public-ipv4" public_ipv4 "$@"
    meta "${base}local-ipv4" local_ipv4 "$@"
    case $provider in
        aws|openstack)
            meta "${base}placement/availability-zone" availability_zone "$@"
            meta "${base}instance-type" instance_type "$@"
            meta "${base}instance-id" instance_id "$@"
            meta "${base}local-hostname" local_hostname "$@"
            get "${base}public-keys/0/openssh-key" "$WORK/keys" "$SMALL_BYTES" "$TIMEOUT" -- "$@" && keys "$WORK/keys" ;;
        hetzner)
            meta "${base}instance-id" instance_id "$@"
            # a JSON list of keys
            if get "${base}public-keys" "$WORK/keys.json" "$SMALL_BYTES" "$TIMEOUT" -- "$@"; then
                if jq -r '.[] | strings' "$WORK/keys.json" >"$WORK/keys" 2>/dev/null; then keys "$WORK/keys"
                else say "Hetzner: public-keys is not a JSON list of strings: ignored"; fi
            fi ;;
    esac
    get "http://$AWS/latest/user-data" "$WORK/userdata" "$MAX_BYTES" "$DATA_TIMEOUT" -- "$@" || true
}

provider_aws() { reachable "$AWS" || return 1; aws_token; ec2_like; }
provider_openstack() { reachable "$AWS" || return 1; AWS_TOKEN=; ec2_like; }
provider_hetzner() { reachable "$AWS" || return 1; AWS_TOKEN=; ec2_like; }

provider_gcp() {
    # metadata.google.internal is this address (Google's guest agent uses it too): no DNS needed at boot
    reachable "$AWS" || return 1
    set -- --header "Metadata-Flavor: Google" --header "Host: metadata.google.internal"
    base=http://$AWS/computeMetadata/v1
    get "$base/instance/hostname" "$WORK/hostname" "$SMALL_BYTES" "$TIMEOUT" -- "$@" || return 1
    put hostname "$WORK/hostname"
    # "user:key" lines; the keys of the project's, then the instance's ssh-keys attribute
    : >"$WORK/keys.all"
    found=
    for scope in project instance; do
        if get "$base/$scope/attributes/ssh-keys" "$WORK/keys.txt" "$SMALL_BYTES" "$TIMEOUT" -- "$@"; then
            sed -n 's/^[^:]*:\(.*\)$/\1/p' "$WORK/keys.txt" >>"$WORK/keys.all"; found=1
        fi
    done
    [ -n "$found" ] && keys "$WORK/keys.all"
    get "$base/instance/attributes/user-data" "$WORK/userdata" "$MAX_BYTES" "$DATA_TIMEOUT" -- "$@" || true
}

provider_digitalocean() {
    reachable "$AWS" || return 1
    base=http://$AWS/metadata/v1/
    get "$base" "$WORK/probe" || return 1
    get "${base}hostname" "$WORK/hostname" || return 1
    put hostname "$WORK/hostname"
    meta "${base}interfaces/public/0/ipv4/address" public_ipv4
    meta "${base}interfaces/private/0/ipv4/address" private_ipv4
    meta "${base}region" region
    meta "${base}id" id
    get "${base}public-keys" "$WORK/keys" && keys "$WORK/keys"
    get "${base}user-data" "$WORK/userdata" "$MAX_BYTES" "$DATA_TIMEOUT" || true
}

provider_vultr() {
    reachable "$AWS" || return 1
    base=http://$AWS/v1/
    get "$base" "$WORK/probe" || return 1
    get "${base}hostname" "$WORK/hostname" || return 1
    put hostname "$WORK/hostname"
    meta "${base}interfaces/0/ipv4/address" public_ipv4
    meta "${base}interfaces/1/ipv4/address" private_ipv4
    meta "${base}interfaces/1/ipv4/netmask" private_netmask
    meta "${base}region/regioncode" region_code
    meta "${base}instanceid" instance_id
    get "${base}public-keys" "$WORK/keys" && keys "$WORK/keys"
    return 0  # LinuxKit reads no user-data on Vultr
}

# scaleway_value NAME: NAME= of Scaleway's KEY=VALUE conf (LinuxKit looks the key up upper-cased).
scaleway_value() {
    key=$(echo "$1" | tr a-z A-Z)
    sed -n "s/^$key=//p" "$WORK/conf" | head -n 1 >"$WORK/value"
    [ -s "$WORK/value" ] || { rm -f "$WORK/value"; return 1; }
}

provider_scaleway() {
    reachable "$SCALEWAY" || return 1
    get "http://$SCALEWAY/conf" "$WORK/conf" || return 1
    for pair in hostname:hostname id:instance_id location_zone_id:instance_location \
                public_ip_address:public_ip private_ip:private_ip; do
        scaleway_value "${pair%%:*}" && put "${pair#*:}" "$WORK/value"
    done
    if scaleway_value ssh_public_keys; then
        count=$(cat "$WORK/value"); : >"$WORK/keys"; i=0
        case $count in *[!0-9]*|'') count=0 ;; esac
        [ "$count" -gt 100 ] && count=100
        while [ "$i" -lt "$count" ]; do
            scaleway_value "ssh_public_keys_${i}_key" && tr -d "'" <"$WORK/value" >>"$WORK/keys"
            i=$((i + 1))
        done
        keys "$WORK/keys"
    fi
    # Scaleway hands user-data only to a connection from a privileged port (CAP_NET_BIND_SERVICE)
    # (a port in use fails at once: the next one is tried)
    for port in 1 2 3 4 5 6 7 8 9 10; do
        printf 'GET /user_data/cloud-init HTTP/1.0\r\n\r\n' | raw "$SCALEWAY" "$WORK/userdata" "$DATA_TIMEOUT" -p "$port"
        [ $? = 1 ] || break
    done
    return 0
}

provider_metaldata() {
    get http://metaldata/get/meta/hostname "$WORK/hostname" || return 1
    put hostname "$WORK/hostname"
    base=http://metaldata/get/meta/
    meta "${base}public-ipv4" public_ipv4
    meta "${base}private-ipv4" private_ipv4
    meta "${base}failure-domain" failure_domain
    meta "${base}machine-id" machine_id
    meta "${base}machine-type" machine_type
    get "${base}authorized-keys" "$WORK/keys" && keys "$WORK/keys"
    get http://metaldata/get/user "$WORK/userdata" "$MAX_BYTES" "$DATA_TIMEOUT" || true
}

provider_unsupported() { debug "$1: not supported by linuxkit-py's metadata package: skipped"; return 1; }

# regular FILE: a regular file, not a symlink (a CD's user-data pointing at /dev/sda is not read)
regular() { [ -f "$1" ] && [ ! -L "$1" ]; }

# cdrom DEVICE: NoCloud's user-data (else LinuxKit's config) of an ISO 9660 or FAT volume.
provider_cdrom_device() {
    mnt=$WORK/cd
    mkdir -p "$mnt"
    mount -t iso9660 -o ro "$1" "$mnt" 2>/dev/null || mount -t vfat -o ro "$1" "$mnt" 2>/dev/null || return 1
    found=1
    for name in user-data config; do
        [ -e "$mnt/$name" ] || [ -L "$mnt/$name" ] || continue
        if ! regular "$mnt/$name"; then say "CDROM $1: $name is not a regular file: refused"; continue; fi
        if capped "$WORK/userdata" "$MAX_BYTES" <"$mnt/$name"; then found=0; break; fi
        say "CDROM $1: $name: more than $MAX_BYTES bytes: refused"
    done
    # NoCloud's meta-data: its local-hostname, when the user-data does not name one
    if [ "$found" = 0 ] && regular "$mnt/meta-data"; then
        head -c "$SMALL_BYTES" "$mnt/meta-data" | sed -n 's/^local-hostname:[ 	]*//p' | head -n 1 \
            | tr -d "\"'\r" >"$WORK/hostname"
        [ -s "$WORK/hostname" ] && put hostname "$WORK/hostname"
    fi
    umount "$mnt" 2>/dev/null
    return "$found"
}

# The CD-ROMs: volumes labelled cidata/CIDATA first (ISO 9660 or FAT), then every /dev/sr*.
cdrom_devices() {
    for label in cidata CIDATA; do findfs "LABEL=$label" 2>/dev/null; done
    for dev in /dev/sr[0-9]*; do [ -b "$dev" ] && echo "$dev"; done
}

# -- user-data ----------------------------------------------------------------------------------------

REFUSED=0
lk_refuse() {
    REFUSED=$((REFUSED + 1))
    [ "$REFUSED" -le 20 ] && say "user-data: $1: $2: refused"
}

# inside REL: REL's parent directory under /run/config is a real directory (no symlink on the way).
inside() {
    parent=$CONFIG/$(dirname "$1")
    [ -d "$parent" ] && [ "$(realpath "$parent" 2>/dev/null)" = "${parent%/.}" ]
}

ENTRIES=0
counted() {
    ENTRIES=$((ENTRIES + 1))
    [ "$ENTRIES" -le "$MAX_ENTRIES" ] && return 0
    [ "$ENTRIES" = $((MAX_ENTRIES + 1)) ] && say "user-data: more than $MAX_ENTRIES entries: the rest refused"
    return 1
}

lk_dir() {
    counted || return 0
    t=$CONFIG/$1
    if ! inside "$1"; then lk_refuse "\"$1\"" "a symbolic link or a file is on the way"; return 0; fi
    if [ -L "$t" ]; then lk_refuse "\"$1\"" "is a symbolic link"; return 0; fi
    [ -d "$t" ] || mkdir -m 700 "$t" 2>/dev/null || lk_refuse "\"$1\"" "cannot be made a directory"
}

lk_file() {
    counted || return 0
    t=$CONFIG/$2
    if ! inside "$2"; then lk_refuse "\"$2\"" "a symbolic link or a file is on the way"; return 0; fi
    if [ -d "$t" ] && [ ! -L "$t" ]; then lk_refuse "\"$2\"" "is a directory"; return 0; fi
    tmp=$(dirname "$t")/.metadata.$$
    rm -f "$tmp"
    printf %s "$3" | base64 -d >"$tmp" 2>/dev/null && chmod "$1" "$tmp" && replace "$tmp" "$t" \
        || { rm -f "$tmp"; lk_refuse "\"$2\"" "cannot be written"; }
}

lk_chmod() {
    t=$CONFIG/$2
    inside "$2" && [ -d "$t" ] && [ ! -L "$t" ] && chmod "$1" "$t"
}

# LinuxKit: the raw user-data in /run/config/userdata (0644); a JSON object is expanded too.
process_userdata() {
    put userdata "$WORK/userdata" 644 || return 0
    jq -r -f /usr/share/metadata/expand.jq "$CONFIG/userdata" >"$WORK/expand.sh" 2>/dev/null || {
        debug "user-data is not JSON: kept as it is"; return 0; }
    . "$WORK/expand.sh"
    [ "$REFUSED" -gt 20 ] && say "user-data: $((REFUSED - 20)) more entries refused"
    return 0
}

# -- hostname ----------------------------------------------------------------------------------------

# LinuxKit sets the hostname from /run/config/hostname (a provider's, or user-data's). Letters,
# digits, "-", "_" and "." only; over 64 bytes (the kernel's limit) its first label is used.
set_hostname() {
    [ -f "$CONFIG/hostname" ] && [ ! -L "$CONFIG/hostname" ] || return 0
    if [ "$(wc -c <"$CONFIG/hostname")" -gt 254 ]; then
        say "hostname $(shown "$CONFIG/hostname"): longer than 253 bytes: refused"; rm -f "$CONFIG/hostname"; return 0
    fi
    name=$(cat "$CONFIG/hostname")  # without its trailing newlines; one inside is refused below
    case $name in
        ''|*[!A-Za-z0-9._-]*|[.-]*)
            say "hostname $(shown "$CONFIG/hostname"): not a host name: refused"
            rm -f "$CONFIG/hostname"; return 0 ;;
    esac
    [ "${#name}" -gt 64 ] && name=${name%%.*}
    if [ "${#name}" -gt 64 ]; then
        say "hostname $(shown "$CONFIG/hostname"): longer than 64 bytes: refused"; rm -f "$CONFIG/hostname"; return 0
    fi
    if hostname "$name" 2>/dev/null; then say "Set hostname to: $name"
    else say "Failed to set hostname to $name"; fi
}

# -- main --------------------------------------------------------------------------------------------

[ "$1" = -v ] && { VERBOSE=1; shift; }
[ $# -gt 0 ] || set -- $DEFAULT
net= cdrom= files=
for p in "$@"; do
    case $p in
        aws|gcp|hetzner|openstack|scaleway|vultr|digitalocean|equinixmetal|metaldata) net="$net $p" ;;
        vmware) ;;  # LinuxKit's VMware guestinfo (a backdoor port) is not in this package
        cdrom) cdrom=1 ;;
        file=*) files="$files ${p#file=}" ;;
        *) echo "Unrecognised metadata provider: $p" >&2; exit 1 ;;
    esac
done

umask 022
rm -rf "$WORK"; mkdir -p "$WORK" "$CONFIG" || { echo "Could not create $CONFIG" >&2; exit 1; }
if [ -L "$CONFIG" ] || [ "$(realpath "$CONFIG")" != "$CONFIG" ]; then say "$CONFIG is a symbolic link: refused"; exit 1; fi

# The addresses are checked at once, so that the providers that are not there cost one check in all.
checks=
if [ -n "$net" ]; then for addr in $AWS $SCALEWAY; do check "$addr" & checks="$checks $!"; done; fi

winner=
for provider in $net; do
    case $provider in
        equinixmetal) provider_unsupported "$provider" ;;
        *) "provider_$provider" ;;
    esac && { winner=$provider; break; }
done
if [ -z "$winner" ] && [ -n "$cdrom" ]; then
    for dev in $(cdrom_devices | awk '!seen[$0]++'); do
        say "Trying CDROM $dev"
        provider_cdrom_device "$dev" && { winner="CDROM $dev"; break; }
    done
fi
if [ -z "$winner" ]; then
    for f in $files; do
        say "Trying file $f"
        if [ -f "$f" ] || [ -b "$f" ] || [ -c "$f" ]; then  # the spec names it: a symlink is followed
            if capped "$WORK/userdata" "$MAX_BYTES" <"$f" 2>/dev/null; then
                winner=$f; break
            fi
            say "$f: more than $MAX_BYTES bytes: refused"
        fi
    done
fi
[ -n "$checks" ] && kill $checks 2>/dev/null  # a check still waiting on an address nobody asks any more
if [ -z "$winner" ]; then say "No metadata/userdata found. Bye"; exit 0; fi

case $winner in
    aws) shown_name=AWS ;; gcp) shown_name=GCP ;; hetzner) shown_name=Hetzner ;; scaleway) shown_name=Scaleway ;;
    vultr) shown_name=Vultr ;; digitalocean) shown_name=DigitalOcean ;; *) shown_name=$winner ;;
esac
say "$shown_name: Probe succeeded"
printf %s "$shown_name" >"$WORK/provider" && put provider "$WORK/provider"
[ -f "$WORK/userdata" ] && process_userdata
set_hostname
exit 0
