#!/bin/sh
# poweroff.sh [SECONDS] [--clean]: sleep SECONDS (default 30), then power off: at once (sync, then
# the reboot system call, as `poweroff -f`), or with --clean through init's shutdown (SIGUSR2 to
# PID 1, which needs the host's pid namespace), which runs the onshutdown containers first.
seconds=30
clean=
for arg in "$@"; do
    case $arg in
        --clean) clean=1 ;;
        *[!0-9]*|'') echo "usage: poweroff.sh [SECONDS] [--clean]" >&2; exit 2 ;;
        *) seconds=$arg ;;
    esac
done
sleep "$seconds"
if [ -n "$clean" ]; then
    echo "poweroff: shutting down after ${seconds}s"
    # busybox init powers off on SIGUSR2
    exec kill -USR2 1
fi
echo "poweroff: powering off after ${seconds}s"
sync
exec poweroff -f
