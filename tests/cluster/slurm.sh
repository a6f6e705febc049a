#!/usr/bin/env bash
# A private single-node SLURM for tests: munged, slurmctld and slurmd started directly (no systemd),
# with every file they use (config, munge key and socket, state, logs, PIDs) under one folder.
#
#   tests/cluster/slurm.sh start    install the Debian packages if missing, start the daemons, wait
#                                   until the node is idle and `srun true` works (idempotent)
#   tests/cluster/slurm.sh stop     cancel this cluster's jobs, stop only the daemons recorded here
#   tests/cluster/slurm.sh status   exit 0 if all three recorded daemons run and the node answers
#   tests/cluster/slurm.sh env      print `export SLURM_CONF=...` (eval it before sinfo/sbatch/snakemake)
#
# Environment: CALCIRAD_SLURM_DIR (default /tmp/calcirad-slurm), CALCIRAD_SLURM_TIMEOUT (seconds to
# wait for the node, default 60), CALCIRAD_SLURMCTLD_PORT / CALCIRAD_SLURMD_PORT (6817 / 6818),
# CALCIRAD_SLURM_HEADROOM_MB (memory kept from SLURM, default 10 % of the total, at least 1024).
# Exit codes: 0 ok, 1 failed (daemon logs printed), 2 usage, 3 SLURM cannot be installed here.
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
        log "ERROR: $SYSTEM_CONF already exists and is not ours: this machine has a SLURM of its own."
        log "Job steps of the Snakemake SLURM plugin would read it instead of $SLURM_CONF; not starting."
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

# One start or stop at a time (e.g. two test sessions starting it together).
lock() {
    exec 9>"$DIR/lock"
    flock -w 120 9 || { log "another slurm.sh holds $DIR/lock"; exit 1; }
}

all_alive() {
    local name
    for name in "${DAEMONS[@]}"; do alive "$name" || return 1; done
}

# ---- subcommands -------------------------------------------------------------------------------

cmd_start() {
    local t0=$SECONDS
    if [[ $(id -u) -ne 0 ]]; then
        log "SLURM cannot be installed or started here: needs root (apt-get, slurmd, munged)"
        exit 3
    fi
    mkdir -p "$DIR/log" "$DIR/pids"
    lock
    install_packages
    if all_alive && scontrol_ok && node_usable; then
        # Idempotent: leave a running cluster (and its jobs) alone.
        log "already running (PIDs: $(cat "$DIR"/pids/*.pid | tr '\n' ' ')), node $NODE $(node_state)"
    else
        # Anything half-running from an earlier start is ours: stop it and start cleanly.
        stop_daemons
        link_system_config
        write_config
        munge_key
        start_daemons
        wait_for "slurmctld to answer" "$TIMEOUT" scontrol_ok
        wait_for "node $NODE to be idle" "$TIMEOUT" node_idle
        wait_for "srun true to succeed" "$TIMEOUT" srun_ok
    fi
    log "SLURM is up in $((SECONDS - t0))s: node $NODE $(node_state), partition $PARTITION"
    log "slurmctld log: $DIR/log/slurmctld.log"
    log "use it with:   export SLURM_CONF=$SLURM_CONF"
}


cmd_stop() {
    [[ -d $DIR ]] && lock
    stop_daemons
    unlink_system_config
    log "stopped (config, logs and state kept in $DIR)"
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
    if ((ok == 0)); then
        echo "node $NODE: $(node_state)"
        node_usable || ok=1
    fi
    return $ok
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$SLURM_CONF" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
