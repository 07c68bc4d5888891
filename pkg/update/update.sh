#!/bin/sh
# linuxkit-py update: A/B updates of a disk built with `linuxkit-py build --ab` (docs/updates.md).
#   update status                      the slots, their versions, which one runs, what is on trial
#   update apply FILE|URL [--allow-downgrade] [--reboot]
#                                      check a bundle (`build -f update`) and write it to the other slot
#   update mark-good                   end the trial of the running version (keep it)
#   update agent [URL]                 the service: health check of a trial boot, then poll URL
#   update health                      the health check now: "healthy", or the problem and exit 1
# URL: http:// or https:// (the bundle), or oci+http://HOST/REPO[:TAG] (oci://: over https), an artifact that
# `linuxkit-py update push` put in a registry (anonymous pulls).
# Environment: UPDATE_HEALTH_SECONDS (30), UPDATE_POLL_SECONDS (300), UPDATE_TRIES (3),
# UPDATE_HEALTH_HOOK_SECONDS (30).
# Every refusal is one line on stderr and writes nothing; the running slot is never written.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
IMAGE=${UPDATE_IMAGE:-/etc/linuxkit-py/image}       # version= and arch= of the running image (in its root)
CERT=${UPDATE_CERT:-/etc/linuxkit-py/update.crt}    # what bundles must be signed by
SERVICES=${UPDATE_SERVICES:-/run/linuxkit-py/services}  # the runtime's per-service state (host's /run)
HEALTH_DIR=${UPDATE_HEALTH_DIR:-/etc/linuxkit-py/health.d}  # the image's own checks (spec `files:`)
HOOK_SECONDS=${UPDATE_HEALTH_HOOK_SECONDS:-30}      # how long one check may take
WORK=${UPDATE_WORK:-/tmp/update}
ESP=/run/update-esp
EFIVARS=${UPDATE_EFIVARS:-/run/update-efivars}      # efivarfs, mounted here when it is not yet
CONSOLE=${UPDATE_CONSOLE:-/dev/console}
LOADER_GUID=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f   # systemd-boot's variables (Boot Loader Interface)
BUNDLE_FORMAT=linuxkit-py-update/1
HEALTH=${UPDATE_HEALTH_SECONDS:-30}
POLL=${UPDATE_POLL_SECONDS:-300}
TRIES=${UPDATE_TRIES:-3}

say() { echo "update: $*" >"$CONSOLE" 2>/dev/null; echo "update: $*" >&2; }
refuse() { echo "update: refused: $*" >&2; echo "update: refused: $*" >"$CONSOLE" 2>/dev/null; cleanup; exit 1; }
cleanup() {
    umount "$ESP" 2>/dev/null
    rm -rf "$WORK"
}

# uptime: seconds since boot (two decimals)
uptime_now() { cut -d' ' -f1 /proc/uptime; }

# value KEY FILE: the value of KEY=... in FILE
value() { sed -n "s/^$1=//p" "$2" | head -n 1; }

# partition NAME: /dev/X of the GPT partition named NAME
partition() {
    local uevent name
    for uevent in /sys/class/block/*/uevent; do
        name=$(sed -n 's/^PARTNAME=//p' "$uevent")
        [ "$name" = "$1" ] && { echo "/dev/$(sed -n 's/^DEVNAME=//p' "$uevent")"; return 0; }
    done
    return 1
}

mount_esp() {
    local dev
    dev=$(partition "EFI System") || refuse "no EFI System Partition (is this an --ab disk?)"
    mkdir -p "$ESP"
    grep -q " $ESP " /proc/mounts || mount -t vfat "$dev" "$ESP" || refuse "cannot mount the ESP $dev"
}

# loader_entry: the ESP file systemd-boot booted (LoaderEntrySelected), e.g. linuxkit-b+2-1.efi
loader_entry() {
    local var="$EFIVARS/LoaderEntrySelected-$LOADER_GUID"
    if [ ! -f "$var" ] && [ -z "$UPDATE_EFIVARS" ]; then
        mkdir -p "$EFIVARS"
        mount -t efivarfs efivarfs "$EFIVARS" 2>/dev/null
    fi
    [ -f "$var" ] || return 1
    # 4 bytes of attributes, then UTF-16LE without the terminating NUL
    tail -c +5 "$var" | tr -d '\000'
}

# running_slot: a or b, from the entry systemd-boot started
running_slot() {
    local entry
    entry=$(loader_entry) || return 1
    case $entry in
        linuxkit-a*) echo a ;;
        linuxkit-b*) echo b ;;
        *) return 1 ;;
    esac
}

other() { [ "$1" = a ] && echo b || echo a; }

# entry_file SLOT: the slot's UKI on the mounted ESP (with its tries counter), or nothing
entry_file() { ls "$ESP/EFI/Linux/linuxkit-$1"*.efi 2>/dev/null | head -n 1; }

# osrel_version FILE: IMAGE_VERSION of a UKI's .osrel
osrel_version() { grep -a -o 'IMAGE_VERSION=[0-9A-Za-z._~-]*' "$1" 2>/dev/null | head -n 1 | cut -d= -f2; }

# newer A B: A sorts after B as a version (sort -V)
newer() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1)" = "$1" ]; }

arch_now() { value arch "$IMAGE"; }
version_now() { value version "$IMAGE"; }

status() {
    local slot file state version running
    running=$(running_slot) || running=?
    mount_esp
    echo "running: version $(version_now) ($(arch_now)) from slot $running"
    for slot in a b; do
        file=$(entry_file "$slot")
        if [ -z "$file" ]; then
            echo "slot $slot: empty"
            continue
        fi
        version=$(osrel_version "$file")
        case ${file##*/} in
            *+0-*.efi) state="failed (no tries left)" ;;
            *+*.efi) state="on trial ($(echo "${file##*/}" | sed 's/.*+\([0-9]*\).*/\1/') tries left)" ;;
            *) state=good ;;
        esac
        echo "slot $slot: version $version, $state${running:+$([ "$slot" = "$running" ] && echo ", running")}"
    done
    umount "$ESP"
}

OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
BUNDLE_MEDIA_TYPE=application/vnd.linuxkit-py.update.v1.tar   # the artifact's one layer: the bundle

# oci_blob SRC: for oci://HOST/REPO[:TAG|@DIGEST] (https) or oci+http://... (http), the URL of the bundle
# blob of the artifact there (registry/artifact.py), a space and its digest; nothing and 1 otherwise (the
# reason on stderr). busybox has no JSON parser: the layer's digest is read from the manifest with sed.
oci_blob() {
    local scheme rest host path repo ref manifest digest
    case $1 in
        oci+http://*) scheme=http rest=${1#oci+http://} ;;
        oci://*) scheme=https rest=${1#oci://} ;;
        *) return 1 ;;
    esac
    host=${rest%%/*} path=${rest#*/}
    case $path in
        *@sha256:*) repo=${path%@*} ref=${path#*@} ;;
        *:*) repo=${path%:*} ref=${path##*:} ;;
        *) repo=$path ref=latest ;;
    esac
    [ "$host" != "$rest" ] && [ -n "$host" ] && [ -n "$repo" ] ||
        { echo "$1: not oci://HOST/REPOSITORY[:TAG]" >&2; return 1; }
    manifest=$(wget -q -O - --header "Accept: $OCI_MANIFEST" "$scheme://$host/v2/$repo/manifests/$ref" 2>/dev/null |
        tr -d ' \n\r\t') || manifest=
    [ -n "$manifest" ] || { echo "cannot download $1 (no manifest at $scheme://$host/v2/$repo/manifests/$ref)" >&2
                            return 1; }
    case $manifest in *"\"mediaType\":\"$BUNDLE_MEDIA_TYPE\""*) ;; *) manifest= ;; esac
    digest=$(echo "$manifest" | sed -n 's|.*"layers":\[{[^]]*"digest":"\(sha256:[0-9a-f]\{64\}\)".*|\1|p')
    [ -n "$digest" ] || { echo "$1 is not an update artifact (no $BUNDLE_MEDIA_TYPE layer)" >&2; return 1; }
    echo "$scheme://$host/v2/$repo/blobs/$digest $digest"
}

# fetch SRC FILE: a local bundle, one over HTTP, or the bundle of an artifact in a registry
fetch() {
    local blob
    case $1 in
        oci://*|oci+http://*)
            blob=$(oci_blob "$1" 2>"$WORK/oci.err") || refuse "$(cat "$WORK/oci.err")"
            wget -q -O "$2" "${blob% *}" || refuse "cannot download $1 (${blob% *})"
            [ "sha256:$(sha256sum "$2" | cut -d' ' -f1)" = "${blob#* }" ] ||
                refuse "$1: the bundle is not the blob its manifest names (${blob#* })" ;;
        http://*|https://*) wget -q -O "$2" "$1" || refuse "cannot download $1" ;;
        *) [ -f "$1" ] || refuse "no bundle $1"; cp "$1" "$2" || refuse "cannot read $1" ;;
    esac
}

# bundle_url SRC: where the bundle's bytes are (for the agent's poll of its first KiBs)
bundle_url() {
    local blob
    case $1 in
        oci://*|oci+http://*) blob=$(oci_blob "$1" 2>/dev/null) && echo "${blob% *}" ;;
        *) echo "$1" ;;
    esac
}

apply() {
    local src="" allow_downgrade="" reboot_after="" arg running target dev size part_size root_sha uki_sha
    local version entry old
    for arg in "$@"; do
        case $arg in
            --allow-downgrade) allow_downgrade=1 ;;
            --reboot) reboot_after=1 ;;
            -*) refuse "unknown option $arg" ;;
            *) src=$arg ;;
        esac
    done
    [ -n "$src" ] || refuse "usage: update apply FILE|URL [--allow-downgrade] [--reboot]"
    local started
    started=$(uptime_now)
    [ -f "$CERT" ] || refuse "this image has no $CERT: it was built without --sign-cert and takes no updates"
    rm -rf "$WORK"; mkdir -p "$WORK"
    fetch "$src" "$WORK/bundle"
    # the manifest and its signature come first; nothing else is read before they are checked
    (cd "$WORK" && tar -xf bundle manifest manifest.sig 2>/dev/null) || refuse "$src is not an update bundle"
    openssl x509 -in "$CERT" -pubkey -noout >"$WORK/key.pem" 2>/dev/null || refuse "cannot read $CERT"
    openssl dgst -sha256 -verify "$WORK/key.pem" -signature "$WORK/manifest.sig" "$WORK/manifest" >/dev/null 2>&1 ||
        refuse "$src: the signature does not verify with $CERT"
    [ "$(value format "$WORK/manifest")" = "$BUNDLE_FORMAT" ] || refuse "$src: not a $BUNDLE_FORMAT bundle"
    version=$(value version "$WORK/manifest")
    [ "$(value arch "$WORK/manifest")" = "$(arch_now)" ] ||
        refuse "$src is for $(value arch "$WORK/manifest"), this device is $(arch_now)"
    if [ -z "$allow_downgrade" ] && ! newer "$version" "$(version_now)"; then
        refuse "$src is version $version, not newer than the running $(version_now) (--allow-downgrade to install it)"
    fi
    # the contents, checked before anything is written
    [ "$(cd "$WORK" && tar -xOf bundle root.img 2>/dev/null | sha256sum | cut -d' ' -f1)" = \
        "$(value root_sha256 "$WORK/manifest")" ] || refuse "$src: its root image does not match its manifest"
    [ "$(cd "$WORK" && tar -xOf bundle uki.efi 2>/dev/null | sha256sum | cut -d' ' -f1)" = \
        "$(value uki_sha256 "$WORK/manifest")" ] || refuse "$src: its UKI does not match its manifest"
    running=$(running_slot) || refuse "cannot tell the running slot (no LoaderEntrySelected: not booted by systemd-boot?)"
    target=$(other "$running")
    dev=$(partition "linuxkit-$target") || refuse "no partition linuxkit-$target"
    size=$(value root_size "$WORK/manifest")
    part_size=$(blockdev --getsize64 "$dev") || refuse "cannot size $dev"
    [ "$size" -le "$part_size" ] || refuse "the root image ($size bytes) does not fit slot $target ($part_size bytes)"
    mount_esp
    # from here on the target slot is not bootable: its entry goes first, then its partition is written
    for old in "$ESP/EFI/Linux/linuxkit-$target"*.efi; do
        [ -e "$old" ] && rm -f "$old"
    done
    sync
    say "writing version $version to slot $target ($dev)"
    (cd "$WORK" && tar -xOf bundle root.img) | dd of="$dev" bs=1M conv=fsync 2>/dev/null ||
        refuse "writing $dev failed"
    root_sha=$(head -c "$size" "$dev" | sha256sum | cut -d' ' -f1)
    [ "$root_sha" = "$(value root_sha256 "$WORK/manifest")" ] || refuse "slot $target ($dev) does not read back what was written"
    (cd "$WORK" && tar -xOf bundle uki.efi) >"$ESP/EFI/Linux/.linuxkit-$target.new" || refuse "writing the UKI failed"
    uki_sha=$(sha256sum "$ESP/EFI/Linux/.linuxkit-$target.new" | cut -d' ' -f1)
    if [ "$uki_sha" != "$(value uki_sha256 "$WORK/manifest")" ]; then
        rm -f "$ESP/EFI/Linux/.linuxkit-$target.new"
        refuse "$src: the UKI does not match its manifest"
    fi
    sync
    entry="linuxkit-$target+$TRIES.efi"
    mv "$ESP/EFI/Linux/.linuxkit-$target.new" "$ESP/EFI/Linux/$entry"   # the one step that makes it bootable
    sync
    say "version $version is in slot $target; it boots next, with $TRIES tries" \
        "($(awk -v a="$started" -v b="$(uptime_now)" 'BEGIN { printf "%.1f", b - a }') s to fetch, check and write)"
    cleanup
    if [ -n "$reboot_after" ]; then
        say "rebooting into version $version"
        reboot
    fi
}

mark_good() {
    local running file
    running=$(running_slot) || { say "not booted by systemd-boot: nothing to mark"; return 0; }
    mount_esp
    file=$(entry_file "$running")
    case ${file##*/} in
        *+*.efi)
            mv "$file" "$ESP/EFI/Linux/linuxkit-$running.efi" && sync
            say "version $(version_now) (slot $running) marked good, $(uptime_now) s after the kernel started" ;;
        *) : ;;
    esac
    umount "$ESP"
}

# on_trial: the running version was started with a tries counter (LoaderEntrySelected names one)
on_trial() {
    case $(loader_entry) in *+*) return 0 ;; esac
    return 1
}

# healthy: every other service is running and never restarted
healthy() {
    local dir name status restarts
    for dir in "$SERVICES"/*; do
        [ -d "$dir" ] || continue
        name=${dir##*/}
        [ "$name" = "${UPDATE_SERVICE:-update}" ] && continue
        status=; restarts=0
        read -r status <"$dir/status" 2>/dev/null
        read -r restarts <"$dir/restarts" 2>/dev/null
        if [ "$status" != running ] || [ "$restarts" != 0 ]; then
            echo "service $name: ${status:-not started}${restarts:+, $restarts restarts}"
            return 1
        fi
    done
    hooks
}

# hooks: every executable in HEALTH_DIR, in name order, in this container (busybox, host network and pids);
# the first that exits non-zero (or outlives HOOK_SECONDS) makes the version unhealthy
hooks() {
    local hook out status
    for hook in "$HEALTH_DIR"/*; do
        [ -f "$hook" ] && [ -x "$hook" ] || continue
        out=$(timeout "$HOOK_SECONDS" "$hook" </dev/null 2>&1)
        status=$?
        [ "$status" = 0 ] && continue
        case $status in 124|143) out="did not finish within ${HOOK_SECONDS}s" ;; esac   # GNU, busybox
        echo "health check ${hook##*/}: exit $status${out:+: $(echo "$out" | tail -n 1)}"
        return 1
    done
    return 0
}

agent() {
    local url=$1 problem failed version bundle
    say "running version $(version_now) from slot $(running_slot || echo '?')"
    if on_trial; then
        say "version $(version_now) is on trial: checking its services for ${HEALTH}s"
        sleep "$HEALTH"
        if problem=$(healthy); then
            mark_good
        else
            say "version $(version_now) failed its health check ($problem); rebooting to use up its tries"
            sleep 1
            reboot
            sleep 60
        fi
    fi
    [ -n "$url" ] || exec sleep 2147483647
    while :; do
        rm -rf "$WORK.poll"; mkdir -p "$WORK.poll"
        # the manifest is the first member: the first KiBs of the bundle hold it
        if bundle=$(bundle_url "$url") && wget -q -O - "$bundle" 2>/dev/null | head -c 4096 >"$WORK.poll/head" &&
                version=$(tar -xOf "$WORK.poll/head" manifest 2>/dev/null | sed -n 's/^version=//p') &&
                [ -n "$version" ] && newer "$version" "$(version_now)"; then
            mount_esp
            failed=""
            for file in "$ESP"/EFI/Linux/linuxkit-*+0-*.efi; do
                [ -e "$file" ] && [ "$(osrel_version "$file")" = "$version" ] && failed=1
            done
            umount "$ESP"
            if [ -z "$failed" ]; then
                say "version $version is available at $url"
                (apply "$url" --reboot) || say "version $version was not installed"
            fi
        fi
        sleep "$POLL"
    done
}

command=$1
[ $# -gt 0 ] && shift
case $command in
    status) status ;;
    apply) apply "$@" ;;
    mark-good) mark_good ;;
    agent) agent "$@" ;;
    health) if problem=$(healthy); then echo healthy; else echo "unhealthy: $problem"; exit 1; fi ;;
    *) echo "usage: update status | apply FILE|URL [--allow-downgrade] [--reboot] | mark-good | agent [URL] | health" >&2
       exit 2 ;;
esac
