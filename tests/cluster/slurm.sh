#!/usr/bin/env bash
# A private single-node SLURM for tests: munged, slurmctld and slurmd started directly (no systemd),
# with every file they use (config, munge key and socket, state, logs, PIDs) under one folder.
#
#   tests/cluster/slurm.sh start [--holder PID]
#                       install the Debian packages if missing, start the daemons unless they run,
#                       wait until the node is idle and `srun true` works; record PID (default: a
#                       by-hand lease, "manual") as a user of the cluster
#   tests/cluster/slurm.sh release --holder PID
#                       PID no longer uses it; the last user's release stops it
#   tests/cluster/slurm.sh stop [--force]
#                       drop the by-hand lease and stop the cluster, unless a live holder still
#                       uses it (exit 4: the last holder's release stops it); --force stops it anyway
#   tests/cluster/slurm.sh status   exit 0 if all three recorded daemons run and the node answers
#   tests/cluster/slurm.sh env      print `export SLURM_CONF=...` (eval it before sinfo/sbatch/snakemake)
#
# One cluster per machine, shared: the plugin's job steps read /etc/slurm/slurm.conf (see below),
# so a second cluster with other ports and folders could not serve them. Concurrent users (two test
# sessions, two clones) share it through leases: $DIR/holders/<PID> (PID and its start time, so a
# reused PID never counts), taken by `start --holder` and dropped by `release`; a lease of a process
# that has exited is dropped by the next start, release or stop. All of it under the flock $DIR/lock.
#
# Environment: CALCIRAD_SLURM_DIR (default /tmp/calcirad-slurm), CALCIRAD_SLURM_TIMEOUT (seconds to
# wait for the node, default 60), CALCIRAD_SLURMCTLD_PORT / CALCIRAD_SLURMD_PORT (6817 / 6818),
# CALCIRAD_SLURM_HEADROOM_MB (memory kept from SLURM, default 10 % of the total, at least 1024).
# Exit codes: 0 ok, 1 failed (daemon logs printed), 2 usage, 3 SLURM cannot be installed here,
# 4 `stop` left the cluster running for its live holders.
set -euo pipefail

DIR=${CALCIRAD_SLURM_DIR:-/tmp/calcirad-slurm}
TIMEOUT=${CALCIRAD_SLURM_TIMEOUT:-60}
CTLD_PORT=${CALCIRAD_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${CALCIRAD_SLURMD_PORT:-6818}
PARTITION=debug
PACKAGES=(munge slurm-client slurmctld slurmd)
# The SLURM plugin's job step drops every SLURM_* variable, SLURM_CONF too, before its inner `srun`,
# which then reads the compiled-in default path: so that path must lead to our config. We make it a
# symbolic link to our file (only if nothing is there yet) and remove it on stop.
SYSTEM_CONF=/etc/slurm/slurm.conf
DAEMONS=(munged slurmctld slurmd)
HOLDERS="$DIR/holders"
# slurmctld's PID, written when this script starts the daemons: a running cluster without it was
# started by something else (an older slurm.sh), which is never stopped on a holder's release.
MARKER="$DIR/pids/leases-since"

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export SLURM_CONF="$DIR/etc/slurm.conf"
NODE=$(hostname -s)

log() { printf 'slurm.sh: %s\n' "$*" >&2; }

# ---- PIDs recorded by this script --------------------------------------------------------------

pid_of() { cat "$DIR/pids/$1.pid" 2>/dev/null || true; }

# Alive and still the daemon we started (guards against a reused PID).
alive() {
    local name=$1 pid
    pid=$(pid_of "$name")
    [[ -n $pid ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$name "* && $cmdline == *"$DIR/"* ]]
}

# ---- leases: who uses the cluster -------------------------------------------------------------

# The start time of process $1 (field 22 of /proc/PID/stat, after the parenthesised name); fails
# if there is no such process or it has exited (a zombie not yet reaped by its parent).
proc_start() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    [[ $1 != [ZX] ]] || return 1
    echo "${20}"
}

holder_alive() {
    local name=$1 pid start
    [[ $name == manual ]] && return 0
    read -r pid start <"$HOLDERS/$name" 2>/dev/null || return 1
    [[ -n $start && $(proc_start "$pid" 2>/dev/null) == "$start" ]]
}

prune_holders() {
    local f
    for f in "$HOLDERS"/*; do
        [[ -e $f ]] || continue
        if ! holder_alive "${f##*/}"; then
            rm -f "$f"
            log "dropped the lease of PID ${f##*/} (exited)"
        fi
    done
}

# The live holders, space-separated ("" if none).
live_holders() {
    local f names=()
    for f in "$HOLDERS"/*; do
        [[ -e $f ]] && holder_alive "${f##*/}" && names+=("${f##*/}")
    done
    echo "${names[*]}"
}

add_holder() {
    local holder=$1 start
    mkdir -p "$HOLDERS"
    if [[ $holder == manual ]]; then
        echo "manual" >"$HOLDERS/manual"
        return 0
    fi
    start=$(proc_start "$holder") || { log "--holder $holder: no such process"; exit 2; }
    printf '%s %s\n%s\n' "$holder" "$start" "$(tr '\0' ' ' <"/proc/$holder/cmdline" | cut -c1-200)" \
        >"$HOLDERS/$holder"
}

# --holder PID (a number) from the arguments; "manual" without it.
parse_holder() {
    HOLDER=manual
    while (($#)); do
        case $1 in
        --holder)
            [[ ${2:-} =~ ^[0-9]+$ ]] || { log "--holder needs a PID"; exit 2; }
            HOLDER=$2
            shift 2
            ;;
        *) log "unknown argument: $1"; exit 2 ;;
        esac
    done
}

# ---- install -----------------------------------------------------------------------------------

installed() {
    local bin
    for bin in munged mungekey slurmctld slurmd sinfo srun sbatch squeue scontrol scancel; do
        command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

install_packages() {
    installed && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "SLURM is not installed and cannot be installed here (needs root and apt-get): ${PACKAGES[*]}"
        exit 3
    fi
    log "installing ${PACKAGES[*]} (Debian packages)"
    local apt=(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}")
    local out="$DIR/log/apt.log"
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$out" 2>&1; then
        log "apt-get install failed; running apt-get update and trying once more"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive "${apt[@]}"; } >>"$out" 2>&1; then
            tail -n 20 "$out" >&2
            log "SLURM cannot be installed here: apt-get failed (log: $out)"
            exit 3
        fi
    fi
    installed || { log "packages installed but SLURM commands are missing (log: $out)"; exit 3; }
}

# ---- configuration -----------------------------------------------------------------------------

write_config() {
    local cpus mem_total headroom real_mem
    cpus=$(nproc)
    mem_total=$(free -m | awk '/^Mem:/ {print $2}')
    headroom=${CALCIRAD_SLURM_HEADROOM_MB:-$((mem_total / 10 > 1024 ? mem_total / 10 : 1024))}
    real_mem=$((mem_total - headroom))
    ((real_mem >= 512)) || { log "too little memory for a SLURM node: ${mem_total} MB total"; exit 1; }

    mkdir -p "$DIR"/{etc,state/ctld,state/slurmd,log,pids}
    cat >"$SLURM_CONF.tmp" <<EOF
# Written by tests/cluster/slurm.sh: a one-node test cluster on loopback. Do not edit; rewritten on start.
ClusterName=calcirad
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${DIR}/munge-run/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${DIR}/log/jobcomp.log
# Finished jobs stay visible to squeue this long: the Snakemake plugin polls squeue and needs
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks, or it falls back to sacct (no slurmdbd).
MinJobAge=600
# Reject at submit time a job that asks for more than the node has (otherwise it pends forever).
EnforcePartLimits=ALL
ReturnToService=2
MailProg=/bin/true
SlurmdParameters=config_overrides
InactiveLimit=0
KillWait=10
Waittime=0
StateSaveLocation=${DIR}/state/ctld
SlurmdSpoolDir=${DIR}/state/slurmd
SlurmctldPidFile=${DIR}/state/slurmctld.pid
SlurmdPidFile=${DIR}/state/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=${real_mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
    log "config: $SLURM_CONF (node $NODE: CPUs=$cpus RealMemory=${real_mem} MB)"
}

munge_key() {
    local key="$DIR/munge/munge.key"
    mkdir -p "$DIR/munge"
    chown munge:munge "$DIR/munge"
    chmod 700 "$DIR/munge"
    if [[ ! -s $key ]]; then
        mungekey --create --keyfile="$key" --bits=1024 2>/dev/null ||
            dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$key"
    chmod 400 "$key"
}

link_system_config() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
        return 0
    fi
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        log "ERROR: $SYSTEM_CONF already exists and is not ours ($(readlink "$SYSTEM_CONF" || echo 'a file'))."
        log "Either this machine has a SLURM of its own, or another test cluster runs with another"
        log "CALCIRAD_SLURM_DIR: one cluster per machine; use its folder to share it. Job steps of the"
        log "Snakemake SLURM plugin would read that config instead of $SLURM_CONF; not starting."
        exit 1
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$SLURM_CONF" "$SYSTEM_CONF"
}

unlink_system_config() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

# ---- daemons -----------------------------------------------------------------------------------

# Start one daemon (in its foreground mode) in the background, in its own session; record its PID.
launch() {
    local name=$1 pid i
    shift
    setsid "$@" </dev/null >>"$DIR/log/$name.stdout" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$DIR/pids/$name.pid"
    # Until the forked shell has exec'd the daemon, its PID shows this script's command line:
    # wait for that, so that `alive` never mistakes a starting daemon for a dead one.
    for ((i = 0; i < 50; i++)); do
        alive "$name" && return 0
        sleep 0.1
    done
    fail "$name did not start"
}

start_daemons() {
    local m="$DIR/munge" r="$DIR/munge-run"
    if ! alive munged; then
        # munged wants its key private (700) and its socket's folder open to all (755).
        mkdir -p "$r"
        chown munge:munge "$r"
        chmod 755 "$r"
        rm -f "$r/munge.socket" "$r/munge.socket.lock"
        launch munged setpriv --reuid=munge --regid=munge --init-groups \
            munged --foreground --key-file="$m/munge.key" --socket="$r/munge.socket" \
            --pid-file="$m/munged.pid" --seed-file="$m/munged.seed"
        wait_for "munged" 10 munge_ok
    fi
    if ! alive slurmctld; then
        # -c: clean state, so a job of an earlier run can never come back as running.
        launch slurmctld slurmctld -D -c -f "$SLURM_CONF"
    fi
    if ! alive slurmd; then
        launch slurmd slurmd -D -f "$SLURM_CONF"
    fi
}

scontrol_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q UP; }
munge_ok() { munge -n --socket="$DIR/munge-run/munge.socket" 2>/dev/null | unmunge --socket="$DIR/munge-run/munge.socket" >/dev/null 2>&1; }
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) == idle ]]; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
srun_ok() { timeout 30 srun -N 1 -n 1 -t 1 --mem=100 true >/dev/null 2>&1; }

healthy() { scontrol_ok && node_usable; }

# poll SECONDS COMMAND...: 0 as soon as COMMAND succeeds (every 2 s), 1 after SECONDS.
poll() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 2
    done
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll every 0.5 s until COMMAND succeeds.
wait_for() {
    local what=$1 secs=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            fail "timed out after ${secs}s waiting for $what"
        fi
        for name in "${DAEMONS[@]}"; do
            if [[ -s $DIR/pids/$name.pid ]] && ! alive "$name"; then
                fail "$name exited while waiting for $what"
            fi
        done
        sleep 0.5
    done
}

print_logs() {
    local f
    for f in munged.stdout slurmctld.log slurmctld.stdout slurmd.log slurmd.stdout; do
        [[ -s $DIR/log/$f ]] || continue
        printf '\n----- %s (last 40 lines) -----\n' "$DIR/log/$f" >&2
        tail -n 40 "$DIR/log/$f" >&2
    done
    printf '\n----- sinfo -----\n' >&2
    timeout 10 sinfo -N -l >&2 2>&1 || true
}

fail() {
    log "ERROR: $*"
    print_logs
    log "stopping the daemons this start launched"
    stop_daemons
    unlink_system_config
    rm -f "$MARKER"
    exit 1
}

stop_daemons() {
    local name pid i
    # Cancel this cluster's jobs first so no slurmstepd outlives slurmd.
    if alive slurmctld; then
        timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    for name in slurmd slurmctld munged; do
        if alive "$name"; then
            pid=$(pid_of "$name")
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 40; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.25
            done
            if kill -0 "$pid" 2>/dev/null; then
                log "$name (PID $pid) did not stop on TERM; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            log "stopped $name (PID $pid)"
        fi
        rm -f "$DIR/pids/$name.pid"
    done
}

# One start, release or stop at a time (e.g. two test sessions starting it together). A start
# holds the lock until the node answers (up to 3 x TIMEOUT, plus an install).
lock() {
    exec 9>"$DIR/lock"
    flock -w $((3 * TIMEOUT + 120)) 9 || { log "another slurm.sh holds $DIR/lock"; exit 1; }
}

all_alive() {
    local name
    for name in "${DAEMONS[@]}"; do alive "$name" || return 1; done
}

# ---- subcommands -------------------------------------------------------------------------------

cmd_start() {
    local t0=$SECONDS others
    parse_holder "$@"
    if [[ $(id -u) -ne 0 ]]; then
        log "SLURM cannot be installed or started here: needs root (apt-get, slurmd, munged)"
        exit 3
    fi
    if [[ $HOLDER != manual ]] && ! proc_start "$HOLDER" >/dev/null; then
        log "--holder $HOLDER: no such process"
        exit 2
    fi
    mkdir -p "$DIR/log" "$DIR/pids"
    lock
    install_packages
    prune_holders
    others=$(live_holders)
    # A cluster in use gets TIMEOUT to answer (a busy machine); an unused one is checked once.
    if all_alive && poll "$([[ -n $others ]] && echo "$TIMEOUT" || echo 0)" healthy; then
        # Idempotent: leave a running cluster (and its jobs) alone, and share it.
        log "already running (PIDs: $(cat "$DIR"/pids/*.pid | tr '\n' ' ')), node $NODE $(node_state)"
        log "users before this start: ${others:-none}"
        if [[ -z $others && $(cat "$MARKER" 2>/dev/null) != "$(pid_of slurmctld)" ]]; then
            # Not started through leases (an older slurm.sh): whoever started it stops it.
            log "it was not started through leases: adding a by-hand lease (\`slurm.sh stop\` ends it)"
            add_holder manual
        fi
    elif all_alive && [[ -n $others ]]; then
        log "ERROR: the running cluster does not answer within ${TIMEOUT}s, and holders ${others} use it:"
        log "not restarting it under them (\`slurm.sh stop --force\` first if it is broken)"
        print_logs
        exit 1
    else
        # Anything half-running from an earlier start is ours: stop it and start cleanly (holders
        # of a half-dead cluster have lost their jobs anyway; their runs see the new PIDs and stop).
        stop_daemons
        link_system_config
        write_config
        munge_key
        start_daemons
        pid_of slurmctld >"$MARKER"
        wait_for "slurmctld to answer" "$TIMEOUT" scontrol_ok
        wait_for "node $NODE to be idle" "$TIMEOUT" node_idle
        wait_for "srun true to succeed" "$TIMEOUT" srun_ok
    fi
    add_holder "$HOLDER"
    log "SLURM is up in $((SECONDS - t0))s: node $NODE $(node_state), partition $PARTITION"
    log "users: $(live_holders)"
    log "slurmctld log: $DIR/log/slurmctld.log"
    log "use it with:   export SLURM_CONF=$SLURM_CONF"
}


stop_all() {
    stop_daemons
    unlink_system_config
    rm -f "$MARKER"
    rm -rf "$HOLDERS"
    log "stopped (config, logs and state kept in $DIR)"
}

cmd_release() {
    local others
    parse_holder "$@"
    [[ $HOLDER != manual ]] || { log "release needs --holder PID (by hand: slurm.sh stop)"; exit 2; }
    [[ -d $DIR ]] || exit 0
    lock
    rm -f "$HOLDERS/$HOLDER"
    prune_holders
    others=$(live_holders)
    if [[ -n $others ]]; then
        log "released by $HOLDER; still used by ${others}: left running"
    else
        log "released by $HOLDER, the last user: stopping"
        stop_all
    fi
}

cmd_stop() {
    local force=0 others
    case ${1:-} in
    --force) force=1 ;;
    "") ;;
    *) log "usage: $0 stop [--force]"; exit 2 ;;
    esac
    [[ -d $DIR ]] || exit 0
    lock
    rm -f "$HOLDERS/manual"
    prune_holders
    others=$(live_holders)
    if [[ -n $others ]] && ((force == 0)); then
        log "still used by ${others} (test sessions): left running; the last one's release stops it."
        log "slurm.sh stop --force stops it now (their Snakemake runs then fail)."
        exit 4
    fi
    [[ -z $others ]] || log "--force: stopping it under PIDs ${others}"
    stop_all
}

cmd_status() {
    local name ok=0
    for name in "${DAEMONS[@]}"; do
        if alive "$name"; then
            echo "$name: running (PID $(pid_of "$name"))"
        else
            echo "$name: not running"
            ok=1
        fi
    done
    echo "SLURM_CONF=$SLURM_CONF"
    echo "slurmctld log: $DIR/log/slurmctld.log"
    echo "users (live leases): $(live_holders)"
    if ((ok == 0)); then
        echo "node $NODE: $(node_state)"
        node_usable || ok=1
    fi
    return $ok
}

case ${1:-} in
start) cmd_start "${@:2}" ;;
release) cmd_release "${@:2}" ;;
stop) cmd_stop "${@:2}" ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$SLURM_CONF" ;;
*)
    echo "usage: $0 start [--holder PID] | release --holder PID | stop [--force] | status | env" >&2
    exit 2
    ;;
esac
