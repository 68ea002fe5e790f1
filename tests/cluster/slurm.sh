#!/usr/bin/env bash
# A private single-node Slurm for the tests (and for trying `durabatch slurm` by hand), on 127.0.0.1.
#
#   bash tests/cluster/slurm.sh install       apt-get the Debian packages slurm-wlm and munge (once per machine)
#   bash tests/cluster/slurm.sh start DIR     munged + slurmctld + slurmd, all state under DIR; prints DIR/env
#   bash tests/cluster/slurm.sh stop DIR      cancel DIR's jobs, stop the daemons started there (by pid)
#
# Everything lives in DIR: its own munge key and socket, slurm.conf, state and spool directories, logs, free
# ports on 127.0.0.1. Nothing touches /etc/slurm or the system's munge, so a second cluster (or a system one)
# can run beside it. Use it with `source DIR/env` (sets SLURM_CONF). Needs root (Slurm jobs run as root here).
set -euo pipefail

PACKAGES=(slurm-wlm munge)
DAEMONS=(munged slurmctld slurmd)

die() { echo "slurm.sh: $*" >&2; exit 1; }

installed() { command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
              && command -v munged >/dev/null; }

cmd_install() {
    installed && return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge (Slurm 22.05+) by hand"
    # The packages' own services must not start: the tests run private daemons. A policy-rc.d says so to
    # invoke-rc.d; systemd machines (CI) get the units masked for the duration of the install.
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$guard" >/dev/null
        $sudo chmod +x "$guard"
    fi
    if [ -d /run/systemd/system ]; then
        $sudo systemctl mask munge.service slurmctld.service slurmd.service >/dev/null 2>&1 || true
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" \
        || { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; }
    [ -n "$guard" ] && $sudo rm -f "$guard"
    if [ -d /run/systemd/system ]; then
        $sudo systemctl unmask munge.service slurmctld.service slurmd.service >/dev/null 2>&1 || true
    fi
    installed || die "slurm-wlm/munge installed but sbatch/slurmctld/slurmd/munged not on PATH"
}

free_port() {  # a port nothing listens on (bash's /dev/tcp: no python needed on the machine)
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        [ "$port" != "${1:-}" ] || continue
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

write_conf() {
    local dir=$1 ctld_port=$2 slurmd_port=$3
    cat > "$dir/etc/slurm.conf" <<EOF
# A private single-node cluster for durabatch's tests (tests/cluster/slurm.sh).
ClusterName=durabatch
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers and CI: track job processes by walking /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2; shift 2
    local until=$((SECONDS + limit))
    while ! "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $until ] || die "$what did not happen within ${limit}s (logs: $DIR/log)"
        sleep 0.1
    done
}

node_idle() { [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = idle ]; }

cmd_start() {
    DIR=$(realpath -m "${1:?start needs a directory}")
    installed || die "Slurm is not installed: run 'bash tests/cluster/slurm.sh install' (as root)"
    [ "$(id -u)" = 0 ] || die "start needs root (slurmd runs jobs as their user; these tests submit as root)"
    [ -s "$DIR/run/pids" ] && die "$DIR: a cluster was started here; stop it first (slurm.sh stop $DIR)"
    mkdir -p "$DIR"/{etc,state,spool,log,run,munge}
    chmod 700 "$DIR/munge"
    # A private munge key: jobs of this cluster authenticate with it only.
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    local ctld_port
    ctld_port=$(free_port)
    write_conf "$DIR" "$ctld_port" "$(free_port "$ctld_port")"
    export SLURM_CONF=$DIR/etc/slurm.conf
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" > "$DIR/env"
    : > "$DIR/run/pids"
    # Each daemon in the foreground (-F / -D), in the background of this script: its pid is ours to stop.
    munged -F --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" \
        </dev/null >>"$DIR/log/munged.out" 2>&1 &
    echo "munged $!" >> "$DIR/run/pids"
    wait_for 20 "munged's socket" test -S "$DIR/munge/munge.socket"
    slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 &
    echo "slurmctld $!" >> "$DIR/run/pids"
    wait_for 30 "slurmctld answering" scontrol ping
    slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >>"$DIR/log/slurmd.out" 2>&1 &
    echo "slurmd $!" >> "$DIR/run/pids"
    wait_for 60 "the node becoming idle" node_idle
    echo "$DIR/env"
}

cmd_stop() {
    DIR=$(realpath -m "${1:?stop needs a directory}")
    [ -s "$DIR/run/pids" ] || return 0
    export SLURM_CONF=$DIR/etc/slurm.conf
    # Jobs first (their slurmstepd outlive slurmd otherwise), then the daemons in reverse order, by pid.
    if scontrol ping >/dev/null 2>&1; then
        scancel --full --quiet --partition=debug 2>/dev/null || true
        local until=$((SECONDS + 30))
        while [ -n "$(squeue -h -t running,completing 2>/dev/null)" ] && [ $SECONDS -lt $until ]; do sleep 0.2; done
    fi
    local name pid until=$((SECONDS + 20))
    while read -r name pid; do kill "$pid" 2>/dev/null || true; done < <(tac "$DIR/run/pids")
    while read -r name pid; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm.sh: $name (pid $pid) still running after 20 s: SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    done < "$DIR/run/pids"
    : > "$DIR/run/pids"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
