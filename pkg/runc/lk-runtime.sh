# linuxkit-py in-image runtime: shell functions shared by /etc/init.d/005-volumes, 010-onboot,
# 020-services, /etc/shutdown.d/010-onshutdown and /usr/bin/service (busybox sh; sourced, not run).
#
# A bundle is /containers/SECTION/NAME with config.json (runc's), runtime.json (LinuxKit's) and
# runtime.sh, the builder's rendering of runtime.json as calls of the lk_* functions below.
# Sourcing runtime.sh applies mounts, mkdir and cgroups at once and records interfaces, bindNS
# and the restart policy; those are applied between `runc create` and `runc start`.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
cd / || exit 1

LK_CONTAINERS=/containers
LK_STATE=/run/linuxkit-py          # per-service supervisor state, timeout markers, pid files
LK_LOGS=/var/log
LK_CONSOLE=/dev/console
LK_STOP_GRACE=5                    # seconds between TERM and KILL when stopping a container
LK_BACKOFF_MAX=30                  # restart delay: 1 s doubling up to this ...
LK_BACKOFF_RESET=60                # ... back to 1 s after a run at least this long

# -- small helpers ----------------------------------------------------------------------------------

# lk_say TEXT: a runtime message on the console (and on stdout when that is somewhere else).
# A write can fail with EIO while the console's tty is being hung up (a login session on it just
# ended, as when getty is stopped): tried again for up to a second before falling back to stdout.
lk_say() {
    local i=0
    while [ $i -lt 10 ]; do
        echo "$*" >>"$LK_CONSOLE" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "$*"
}

# lk_now: centiseconds since boot (/proc/uptime has two decimals).
lk_now() {
    local up rest
    read -r up rest </proc/uptime
    # 1xx - 100 keeps a leading zero of the fraction from reading as octal
    echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

# lk_seconds CENTISECONDS: "1.23"
lk_seconds() {
    printf '%d.%02d' $(($1 / 100)) $(($1 % 100))
}

# lk_cmdline KEY DEFAULT: the value of KEY=VALUE on the kernel command line, or DEFAULT.
read -r LK_CMDLINE </proc/cmdline  # read once (a builtin, no process): every lookup below uses it
lk_cmdline() {
    local arg value=$2
    set -f  # no globbing of the words
    for arg in $LK_CMDLINE; do
        case $arg in "$1"=*) value=${arg#*=} ;; esac
    done
    set +f
    echo "$value"
}

# lk_seconds_setting KEY DEFAULT: a whole number of seconds from the kernel command line.
lk_seconds_setting() {
    local value
    value=$(lk_cmdline "$1" "$2")
    case $value in
        ''|*[!0-9]*) lk_say "runtime: $1=$value is not a number of seconds, using $2"; echo "$2" ;;
        *) echo "$value" ;;
    esac
}

# lk_trace WHAT: with linuxkit.trace=1 on the kernel command line, "trace: [UPTIME] WHAT" on the console
# (bench/boot.py reads them); nothing otherwise.
lk_trace() {
    [ -n "$LK_TRACE" ] || return 0
    local up rest
    read -r up rest </proc/uptime
    lk_say "trace: [$up] $*"
}
case " $LK_CMDLINE " in *" linuxkit.trace=1 "*) LK_TRACE=1 ;; *) LK_TRACE= ;; esac

# lk_runc ARGS...: runc, with --debug when the kernel command line has linuxkit.runc_debug=1.
lk_runc() {
    if [ "$LK_RUNC_DEBUG" = 1 ]; then runc --debug "$@"; else runc "$@"; fi
}
LK_RUNC_DEBUG=$(lk_cmdline linuxkit.runc_debug 0)

# lk_delete ID: forget the runc state of container ID. `runc delete -f` is one more start of runc (a Go
# program: slow under emulation) on a boot's critical path, so it runs only when runc keeps state for ID
# (runc's default root, /run/runc/ID, or crun's, /run/crun/ID, with pkg/crun; `run` removes it when the
# container exits normally).
lk_delete() {
    [ -e "$LK_RUNC_ROOT/$1" ] || [ -e "$LK_CRUN_ROOT/$1" ] || return 0
    lk_runc delete -f "$1" >/dev/null 2>&1
}
LK_RUNC_ROOT=/run/runc LK_CRUN_ROOT=/run/crun

# lk_short_name ID: the spec name of a bundle directory (000-dhcpcd -> dhcpcd).
lk_short_name() {
    case $1 in
        [0-9][0-9][0-9]-?*) echo "${1#[0-9][0-9][0-9]-}" ;;
        *) echo "$1" ;;
    esac
}

# lk_prefix NAME FILE: FILE on stdout with "NAME: " before every line.
lk_prefix() {
    [ -s "$2" ] || return 0
    awk -v prefix="$1: " '{ print prefix $0 }' "$2"
}

# lk_fail MESSAGE: remember that preparing the current bundle failed.
lk_fail() {
    LK_ERROR="${LK_ERROR:+$LK_ERROR; }$*"
    return 1
}

# -- the functions runtime.sh calls -------------------------------------------------------------------

# lk_mount TYPE SOURCE DEST OPTIONS: mount DEST as LinuxKit's runtime does; DEST and the overlay
# upperdir/workdir are created first. OPTIONS is comma separated (flags and filesystem data).
# Propagation options (private, rshared, ...) are applied after the mount; `remount` with only
# propagation options (the rootfs layout's "remount,private" of tmp) just changes the propagation.
lk_mount() {
    local type=$1 source=$2 dest=$3 options=$4 opt rest='' propagation='' dirs='' failed=''
    local IFS=,
    set -f  # the words are options and paths, not patterns
    for opt in $options; do
        case $opt in
            upperdir=*|workdir=*) dirs="$dirs,${opt#*=}"; rest="$rest,$opt" ;;
            shared|rshared|slave|rslave|private|rprivate|unbindable|runbindable) propagation="$propagation,$opt" ;;
            *) rest="$rest,$opt" ;;
        esac
    done
    for opt in "$dest" $dirs; do
        [ -z "$opt" ] || mkdir -p "$opt" || { failed=$opt; break; }
    done
    set +f
    [ -z "$failed" ] || { lk_fail "cannot create directory $failed for the mount on $dest"; return 1; }
    rest=${rest#,}
    if [ -n "$type$source" ] || { [ -n "$rest" ] && [ "$rest" != remount ]; }; then
        set --
        [ -n "$type" ] && set -- "$@" -t "$type"
        [ -n "$rest" ] && set -- "$@" -o "$rest"
        # mount(2) takes an empty source; busybox mount wants a word: the type names the source.
        [ -z "$source" ] && [ -n "$type" ] && source=$type
        if [ -n "$source" ]; then set -- "$@" "$source" "$dest"; else set -- "$@" "$dest"; fi
        mount "$@" || { lk_fail "mount of ${source:-$dest} on $dest failed"; return 1; }
        case ",$rest," in
            *,remount,*) ;;
            *) LK_MOUNTED="$dest
$LK_MOUNTED" ;;  # newest first: the order to unmount in
        esac
    fi
    for opt in $propagation; do
        [ -n "$opt" ] && ! mount "--make-$opt" "$dest" && { lk_fail "cannot make $dest $opt"; return 1; }
    done
    return 0
}

# lk_mkdir DIR
lk_mkdir() {
    mkdir -p "$1" || lk_fail "cannot create directory $1"
}

# lk_cgroup PATH: a cgroup v2 directory under /sys/fs/cgroup.
lk_cgroup() {
    mkdir -p "/sys/fs/cgroup/$1" || lk_fail "cannot create cgroup $1"
}

# lk_interface NAME ADD PEER CREATE_IN_ROOT: recorded, applied once the container exists.
lk_interface() {
    LK_INTERFACES="$LK_INTERFACES$1|$2|$3|$4
"
}

# lk_bindns NS PATH: recorded, applied once the container exists.
lk_bindns() {
    LK_BINDNS="$LK_BINDNS$1 $2
"
}

# lk_restart always|on-failure|no
lk_restart() {
    LK_RESTART=$1
}

# -- bundles ------------------------------------------------------------------------------------------

# lk_prepare BUNDLE: apply BUNDLE's runtime.sh (or, for a bundle LinuxKit built, its rootfs mounts).
# Fails with the reasons in $LK_ERROR.
lk_prepare() {
    LK_ERROR='' LK_MOUNTED='' LK_INTERFACES='' LK_BINDNS='' LK_RESTART=always
    if [ -f "$1/runtime.sh" ]; then
        . "$1/runtime.sh"
    else
        lk_rootfs_mounts "$1"
    fi
    [ -z "$LK_ERROR" ]
}

# lk_rootfs_mounts BUNDLE: the rootfs mounts of a bundle without runtime.sh (LinuxKit's layout).
lk_rootfs_mounts() {
    lk_say "runtime: $1 has no runtime.sh: only its rootfs is mounted, other runtime.json settings are ignored"
    if [ -d "$1/lower" ]; then
        lk_mount tmpfs tmpfs "$1/tmp" ""
        lk_mount "" "" "$1/tmp" remount,private
        lk_mount overlay overlay "$1/rootfs" "lowerdir=$1/lower,upperdir=$1/tmp/upper,workdir=$1/tmp/work"
    else
        lk_mount "" "$1/rootfs" "$1/rootfs" bind
    fi
}

# lk_unprepare: unmount what lk_prepare mounted (rootfs, then tmp), newest first.
lk_unprepare() {
    local dir
    while IFS= read -r dir; do
        [ -n "$dir" ] && umount "$dir" 2>/dev/null
    done <<EOF
$LK_MOUNTED
EOF
    LK_MOUNTED=
}

# lk_needs_create: whether the bundle has settings applied between `runc create` and `runc start`.
lk_needs_create() {
    [ -n "$LK_INTERFACES$LK_BINDNS" ]
}

# lk_prepare_process PID: move or create the recorded interfaces and bind the namespaces of PID.
lk_prepare_process() {
    local pid=$1 name add peer in_root ns path
    while IFS='|' read -r name add peer in_root; do
        [ -n "$name$add$peer" ] || continue
        lk_add_interface "$pid" "$name" "$add" "$peer" "$in_root" || return 1
    done <<EOF
$LK_INTERFACES
EOF
    while read -r ns path; do
        [ -n "$ns" ] || continue
        umount "$path" 2>/dev/null  # the namespace of a previous run of a restarted service
        mkdir -p "$(dirname "$path")" && touch "$path" &&
            mount --bind "/proc/$pid/ns/$ns" "$path" ||
            { lk_fail "cannot bind the $ns namespace on $path"; return 1; }
    done <<EOF
$LK_BINDNS
EOF
}

# lk_add_interface PID NAME ADD PEER CREATE_IN_ROOT (LinuxKit's rules: a peer means veth, created in
# the root namespace with the peer left there; no ADD means move the existing interface NAME).
lk_add_interface() {
    local pid=$1 name=$2 add=$3 peer=$4 in_root=$5 move=
    [ -n "$name" ] || { lk_fail "an interface needs a name"; return 1; }
    [ -n "$peer" ] && [ -z "$add" ] && add=veth
    { [ "$in_root" = true ] || [ "$add" = veth ]; } && move=1
    if [ "$add" = veth ]; then
        [ -n "$peer" ] || { lk_fail "veth $name needs a peer"; return 1; }
        ip link add "$name" type veth || { lk_fail "cannot create veth $name"; return 1; }
        # busybox ip ignores `peer name X`: rename the peer it made (shown as NAME@PEER)
        local other
        other=$(ip -o link show "$name" | awk -F': ' '{ sub(/^[^@]*@/, "", $2); print $2; exit }')
        ip link set "$other" name "$peer" || { lk_fail "cannot name the peer of $name $peer"; return 1; }
    elif [ -n "$add" ] && [ -n "$move" ]; then
        ip link add "$name" type "$add" || { lk_fail "cannot create $add interface $name"; return 1; }
    elif [ -n "$add" ]; then
        nsenter -t "$pid" -n ip link add "$name" type "$add" || { lk_fail "cannot create $add interface $name"; return 1; }
    else
        move=1
    fi
    if [ -n "$move" ]; then
        ip link set "$name" netns "$pid" || { lk_fail "cannot move interface $name into the container"; return 1; }
    fi
}

# lk_wait_pid PID: wait for a child of this shell even when a trapped signal interrupts `wait`.
lk_wait_pid() {
    local status
    while :; do
        wait "$1"
        status=$?
        kill -0 "$1" 2>/dev/null || return $status
    done
}

# lk_wait_gone PID: wait for a process that is not our child (1 s polls); no exit status.
lk_wait_gone() {
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
}

# lk_start ID BUNDLE LOG: start the prepared container ID; sets LK_PID to what to wait for and
# LK_CHILD=1 when that is our `runc run` child (its status is the container's), else empty
# (created then started: the container is re-parented to init and its status is lost).
lk_start() {
    local id=$1 bundle=$2 log=$3 pidfile="$LK_STATE/$1.pid"
    LK_PID='' LK_CHILD=''
    if ! lk_needs_create; then
        lk_runc run --bundle "$bundle" "$id" </dev/null >>"$log" 2>&1 &
        LK_PID=$! LK_CHILD=1
        return 0
    fi
    rm -f "$pidfile"
    lk_runc create --bundle "$bundle" --pid-file "$pidfile" "$id" </dev/null >>"$log" 2>&1 ||
        { lk_fail "runc create failed (see $log)"; return 1; }
    read -r LK_PID <"$pidfile"
    if ! lk_prepare_process "$LK_PID" || ! lk_runc start "$id" >>"$log" 2>&1; then
        [ -n "$LK_ERROR" ] || lk_fail "runc start failed (see $log)"
        lk_runc delete -f "$id" >/dev/null 2>&1
        LK_PID=
        return 1
    fi
}

# lk_wait ID: wait for the container lk_start started; returns its status when LK_CHILD is set.
lk_wait() {
    if [ -n "$LK_CHILD" ]; then
        lk_wait_pid "$LK_PID"
    else
        lk_wait_gone "$LK_PID"
        return 255
    fi
}

# lk_kill ID SIGNAL: signal every process of container ID.
lk_kill() {
    lk_runc kill --all "$1" "$2" >/dev/null 2>&1
}

# lk_watchdog ID SECONDS PID: kill container ID if PID still runs after SECONDS.
lk_watchdog() {
    local i=0
    while [ $i -lt "$2" ]; do
        sleep 1
        kill -0 "$3" 2>/dev/null || return 0
        i=$((i + 1))
    done
    touch "$LK_STATE/$1.timedout"
    lk_kill "$1" KILL
    # should runc itself be stuck, end it too
    sleep 5
    kill -KILL "$3" 2>/dev/null
}

# -- onboot / onshutdown ------------------------------------------------------------------------------

# lk_run_once SECTION BUNDLE TIMEOUT: run one onboot/onshutdown container to its end (killed after
# TIMEOUT seconds; 0: never); its output goes to /var/log/SECTION.ID.log, then to the console prefixed with
# its name. Returns non-zero when it failed.
lk_run_once() {
    local section=$1 bundle=$2 timeout=$3 id name log start status dog
    id=${bundle##*/}
    name=$(lk_short_name "$id")
    log="$LK_LOGS/$section.$id.log"
    : >"$log"
    mkdir -p "$LK_STATE"
    rm -f "$LK_STATE/$id.timedout"
    start=$(lk_now)
    lk_trace "$section $name: starting"
    if ! lk_prepare "$bundle" || ! lk_start "$id" "$bundle" "$log"; then
        lk_prefix "$name" "$log"
        lk_say "$section $name: not started: $LK_ERROR"
        lk_unprepare
        return 1
    fi
    dog=''
    if [ "$timeout" -gt 0 ]; then
        lk_watchdog "$id" "$timeout" "$LK_PID" &
        dog=$!
    fi
    lk_wait "$id"
    status=$?
    lk_trace "$section $name: exited"
    [ -n "$dog" ] && kill "$dog" 2>/dev/null
    lk_delete "$id"
    lk_unprepare
    lk_prefix "$name" "$log"
    local took
    took=$(lk_seconds $(($(lk_now) - start)))
    if [ -f "$LK_STATE/$id.timedout" ]; then
        lk_say "$section $name: killed after the ${timeout}s timeout"
        return 1
    fi
    if [ -z "$LK_CHILD" ]; then
        lk_say "$section $name: ended after ${took}s"
    elif [ "$status" = 0 ]; then
        lk_say "$section $name: done in ${took}s"
    else
        lk_say "$section $name: failed with status $status after ${took}s"
        return 1
    fi
}

# lk_run_section SECTION TIMEOUT: every bundle of /containers/SECTION in order; failures are
# reported and the next one runs.
lk_run_section() {
    local bundle failed=0
    for bundle in "$LK_CONTAINERS/$1"/*; do
        [ -d "$bundle" ] || continue
        lk_run_once "$1" "$bundle" "$2" || failed=1
    done
    return $failed
}

# -- volumes ------------------------------------------------------------------------------------------

# lk_mount_volumes: /containers/volumes/NAME/merged = lower, writable through an overlay when the
# volume has a tmp/ directory (read-only bind otherwise), as LinuxKit's 005-volumes does.
lk_mount_volumes() {
    local volume
    for volume in "$LK_CONTAINERS/volumes"/*; do
        [ -d "$volume/lower" ] || continue
        LK_ERROR=
        if [ -d "$volume/tmp" ]; then
            lk_mount tmpfs tmpfs "$volume/tmp" "" &&
                lk_mount overlay overlay "$volume/merged" \
                    "lowerdir=$volume/lower,upperdir=$volume/tmp/upper,workdir=$volume/tmp/work"
        else
            lk_mount "" "$volume/lower" "$volume/merged" bind && lk_mount "" "" "$volume/merged" remount,bind,ro
        fi || lk_say "volume ${volume##*/}: $LK_ERROR"
    done
}

# -- services -----------------------------------------------------------------------------------------

# lk_service_dir NAME: the supervisor state directory of service NAME.
lk_service_dir() {
    echo "$LK_STATE/services/$1"
}

# lk_supervisor_pid NAME: the pid of NAME's running supervisor, or fails.
lk_supervisor_pid() {
    local pid
    read -r pid 2>/dev/null <"$(lk_service_dir "$1")/supervisor" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# lk_supervise NAME: prepare service NAME, then run it and restart it by its policy, with back-off,
# until it is stopped (SIGTERM to this shell) or the policy says no. Runs in its own session.
lk_supervise() {
    local name=$1 bundle="$LK_CONTAINERS/services/$1" dir log delay=1 status start ran restarts=0
    dir=$(lk_service_dir "$name")
    log="$LK_LOGS/$name.log"
    mkdir -p "$dir"
    echo $$ >"$dir/supervisor"
    echo 0 >"$dir/restarts"
    LK_STOPPING=
    trap 'LK_STOPPING=1' TERM
    if ! lk_prepare "$bundle"; then
        lk_say "service $name: not started: $LK_ERROR"
        lk_unprepare
        echo "not started" >"$dir/status"
        rm -f "$dir/supervisor"
        return 1
    fi
    echo "$LK_RESTART" >"$dir/policy"
    while :; do
        lk_delete "$name"
        start=$(lk_now)
        lk_trace "service $name: starting"
        if lk_start "$name" "$bundle" "$log"; then
            echo running >"$dir/status"
            lk_say "service $name: started"
            lk_wait "$name"
            status=$?
            [ -z "$LK_CHILD" ] && status=unknown
        else
            lk_say "service $name: not started: $LK_ERROR"
            status=1
        fi
        [ -n "$LK_STOPPING" ] && break
        ran=$(( ($(lk_now) - start) / 100 ))
        echo "exited ($status)" >"$dir/status"
        if [ "$LK_RESTART" = no ] || { [ "$LK_RESTART" = on-failure ] && [ "$status" = 0 ]; }; then
            lk_say "service $name: exited with status $status after ${ran}s; not restarted (restart: $LK_RESTART)"
            break
        fi
        [ "$ran" -ge "$LK_BACKOFF_RESET" ] && delay=1
        lk_say "service $name: exited with status $status after ${ran}s; restarting in ${delay}s"
        sleep "$delay" &
        lk_wait_pid $!
        [ -n "$LK_STOPPING" ] && break
        restarts=$((restarts + 1))
        echo "$restarts" >"$dir/restarts"
        delay=$((delay * 2))
        [ "$delay" -gt "$LK_BACKOFF_MAX" ] && delay=$LK_BACKOFF_MAX
    done
    lk_delete "$name"
    lk_unprepare
    [ -n "$LK_STOPPING" ] && echo stopped >"$dir/status" && lk_say "service $name: stopped"
    rm -f "$dir/supervisor"
}

# lk_service_launch NAME: start NAME's supervisor in its own session, detached from the caller.
lk_service_launch() {
    if lk_supervisor_pid "$1" >/dev/null; then
        echo "service $1 is already running" >&2
        return 1
    fi
    [ -f "$LK_CONTAINERS/services/$1/config.json" ] || { echo "no service named $1" >&2; return 1; }
    mkdir -p "$(lk_service_dir "$1")"
    # setsid execs in place (a background job is no process group leader): $! is the supervisor,
    # recorded now so that a second start right after this one sees it running
    setsid /usr/bin/service supervise "$1" </dev/null >"$LK_CONSOLE" 2>&1 &
    echo $! >"$(lk_service_dir "$1")/supervisor"
}

# lk_service_wait_started NAME SECONDS: until NAME's status is no longer "starting" (used after a
# service that binds namespaces, which the services after it may join).
lk_service_wait_started() {
    local i=0 dir status
    dir=$(lk_service_dir "$1")
    while [ $i -lt $(($2 * 5)) ]; do
        status=
        read -r status 2>/dev/null <"$dir/status"
        [ -n "$status" ] && return 0
        sleep 0.2
        i=$((i + 1))
    done
    return 1
}

# lk_services_start_all: every service, in name order.
lk_services_start_all() {
    local bundle name
    for bundle in "$LK_CONTAINERS/services"/*; do
        [ -f "$bundle/config.json" ] || continue
        name=${bundle##*/}
        rm -f "$(lk_service_dir "$name")/status"
        lk_service_launch "$name" || continue
        if grep -q '^lk_bindns ' "$bundle/runtime.sh" 2>/dev/null; then
            lk_service_wait_started "$name" 30
        fi
    done
}

# lk_services_stop NAME...: stop services (all running ones without NAME): their supervisors stop
# restarting, the containers get TERM, then KILL after LK_STOP_GRACE seconds.
lk_services_stop() {
    local name pid names='' i
    if [ $# -eq 0 ]; then
        for name in "$LK_STATE/services"/*; do
            [ -d "$name" ] && set -- "$@" "${name##*/}"
        done
    fi
    for name in "$@"; do
        pid=$(lk_supervisor_pid "$name") || continue
        kill -TERM "$pid"
        lk_runc kill "$name" TERM >/dev/null 2>&1  # its PID 1 only, as docker stop does
        names="$names $name"
    done
    [ -n "$names" ] || return 0
    i=0
    while [ $i -lt $((LK_STOP_GRACE * 5)) ]; do
        lk_any_supervisor $names || return 0
        sleep 0.2
        i=$((i + 1))
    done
    for name in $names; do
        lk_supervisor_pid "$name" >/dev/null && lk_kill "$name" KILL
    done
    i=0
    while [ $i -lt 25 ] && lk_any_supervisor $names; do
        sleep 0.2
        i=$((i + 1))
    done
}

# lk_any_supervisor NAME...: whether any of these services still has a supervisor.
lk_any_supervisor() {
    local name
    for name in "$@"; do
        lk_supervisor_pid "$name" >/dev/null && return 0
    done
    return 1
}
