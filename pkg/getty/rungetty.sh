#!/bin/sh
# A getty on every console=TTY[,SPEED] of the kernel command line (each once), respawned whenever
# its session ends; this script waits for them. INSECURE=true: root is logged in without a
# password. Otherwise login checks /etc/shadow, replaced by the host's /etc/getty.shadow if any.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
SHADOW=/hostroot/etc/getty.shadow

if [ -f "$SHADOW" ]; then
    cp "$SHADOW" /etc/shadow
    echo >>/etc/shadow        # login needs the last line terminated
    chmod 0600 /etc/shadow
fi

login_args=
[ "$INSECURE" = true ] && login_args="-n -l /usr/libexec/getty/autologin"

respawn() {
    while :; do
        # getty makes itself a session leader with the tty as controlling terminal
        getty "$@"
        sleep 1
    done
}

started=
for option in $(cat /proc/cmdline); do
    case $option in
        console=*) ;;
        *) continue ;;
    esac
    console=${option#console=}
    tty=${console%%,*}
    speed=${console#*,}
    [ "$speed" = "$console" ] && speed=115200
    speed=${speed%%[!0-9]*}    # 115200n8 -> 115200
    case " $started " in *" $tty "*) continue ;; esac
    started="$started $tty"
    if [ ! -c "/dev/$tty" ]; then
        echo "getty: console=$tty has no character device /dev/$tty; no getty for it" >/dev/console
        continue
    fi
    case $tty in
        ttyS*|ttyAMA*|ttyUSB*|hvc*|ttysclp*) line="-L $speed $tty vt100" ;;
        *) line="38400 $tty linux" ;;
    esac
    if [ -z "$login_args" ] && ! grep -qx "$tty" /etc/securetty; then
        echo "getty: $tty is not in /etc/securetty: root cannot log in there" >"/dev/$tty"
    fi
    echo "getty: starting on $tty${login_args:+ (INSECURE: root without a password)}" >"/dev/$tty"
    # shellcheck disable=SC2086  # word splitting intended
    respawn $login_args $line &
done

[ -n "$started" ] || { echo "getty: no console= on the kernel command line" >&2; exit 1; }
wait
