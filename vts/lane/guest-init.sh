#!/bin/sh
# /init of the kernel-lane initramfs (busybox sh, PID 1).
# Sets up proc/sys/dev/tmp/cgroup2, loads the lane modules, prepares binder and
# dma-heap device nodes, mounts the host share (9p) at /share, prints a banner
# ("lane: ..." lines), runs /share/<lane.script> and writes its exit code to
# /share/.guest-exit, then powers off. Never exits (PID 1 must not).
#
# Kernel command line read here:
#   lane.script=RELPATH   script/binary under /share to run (required)
#   <module>.<param>=VAL  passed to insmod for modules loaded from the initramfs
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Without /dev/console in the cpio the kernel starts us with no stdio.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "lane: WARNING: cannot mount cgroup2"
hostname lane 2>/dev/null

lane_halt() {
    sync
    umount /share 2>/dev/null
    poweroff -f
    sleep 1000000
}

cmdline=$(cat /proc/cmdline)
script=
for arg in $cmdline; do
    case $arg in
        lane.script=*) script=${arg#lane.script=} ;;
    esac
done

# Modules shipped in the initramfs, in dependency order (built by run-guest.sh).
if [ -f /lib/modules/lane/order ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        # Module parameters from the kernel command line (mod.param=val), as modprobe would.
        params=
        for arg in $cmdline; do
            case $arg in
                *.*=*)
                    m=${arg%%.*}
                    if [ "$(echo "$m" | tr - _)" = "$mod" ]; then
                        params="$params ${arg#*.}"
                    fi
                    ;;
            esac
        done
        # shellcheck disable=SC2086 # params are separate words
        insmod "/lib/modules/lane/$mod.ko" $params || echo "lane: WARNING: insmod $mod failed"
    done </lib/modules/lane/order
fi

# cgroup v2 controllers for children of the root.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    for c in memory dmem pids; do
        case " $(cat /sys/fs/cgroup/cgroup.controllers) " in
            *" $c "*) echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control ||
                echo "lane: WARNING: cannot enable $c controller" ;;
        esac
    done
fi

# Binder: binderfs when built in, else the misc devices of binder_linux.
mkdir -p /dev/binderfs
if grep -qw binder /proc/filesystems; then
    mount -t binder binder /dev/binderfs || echo "lane: WARNING: cannot mount binderfs"
    for d in /dev/binderfs/*binder; do
        [ -e "$d" ] && [ ! -e "/dev/${d##*/}" ] && ln -s "$d" "/dev/${d##*/}"
    done
else
    for d in /dev/binder /dev/hwbinder /dev/vndbinder; do
        [ -e "$d" ] && ln -s "$d" "/dev/binderfs/${d##*/}"
    done
fi
# Device nodes only: /dev/binderfs itself must keep its search bit.
for n in /dev/binder* /dev/hwbinder /dev/vndbinder /dev/binderfs/* /dev/dma_heap/*; do
    [ -c "$n" ] && chmod 0666 "$n"
done

# Banner.
echo "lane: kernel $(uname -r)"
echo "lane: cmdline $cmdline"
echo "lane: cgroup.controllers $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
echo "lane: cgroup.subtree_control $(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"
echo "lane: modules $(cut -d' ' -f1 /proc/modules 2>/dev/null | tr '\n' ' ')"
if [ -e /dev/binder ]; then
    echo "lane: binder $(stat -L -c '%A %t %T' /dev/binder | { read -r m ma mi; printf '%s %d:%d' "$m" "0x$ma" "0x$mi"; }) binderfs: $(cd /dev/binderfs && echo *)"
else
    echo "lane: binder MISSING"
fi
if ls /dev/dma_heap/* >/dev/null 2>&1; then
    echo "lane: dma_heap $(cd /dev/dma_heap && echo *)"
else
    echo "lane: dma_heap MISSING"
fi
if [ -r /sys/module/dma_heap/parameters/mem_accounting ]; then
    echo "lane: dma_heap.mem_accounting $(cat /sys/module/dma_heap/parameters/mem_accounting)"
fi

mkdir -p /share
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none share /share; then
    echo "lane: FATAL: cannot mount the 9p share"
    lane_halt
fi
if [ -z "$script" ] || [ ! -e "/share/$script" ]; then
    echo "lane: FATAL: no script '/share/$script' (lane.script= on the kernel command line)"
    lane_halt
fi

echo "lane: run /share/$script at uptime $(cut -d' ' -f1 /proc/uptime)s"
cd /share || lane_halt
if [ -x "/share/$script" ]; then
    "/share/$script"
else
    sh "/share/$script"
fi
rc=$?
cd /
echo "lane: exit $rc at uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "$rc" >/share/.guest-exit
lane_halt
