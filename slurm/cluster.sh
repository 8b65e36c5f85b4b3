#!/usr/bin/env bash
# A real one-machine SLURM cluster on loopback: munged, mariadbd + slurmdbd (accounting, for sacct),
# slurmctld and N virtual slurmd nodes n1..nN. For tests and for trying zoobot-hpc without a cluster.
#
#   cluster.sh start [--nodes N] [--cpus-per-node C] [--preemption] [--root DIR]
#                                                                   start (no-op when already running)
#   cluster.sh stop   [--root DIR]                                  cancel jobs, stop every daemon
#   cluster.sh status [--root DIR]                                  exit 0 when running, 1 otherwise
#   cluster.sh env    [--root DIR]                                  print `export SLURM_CONF=...`
#   cluster.sh fail-node NODE [--root DIR]                          NODE stops answering, its jobs' processes too
#   cluster.sh reboot-node NODE [--root DIR]                        kill what ran on NODE, start its slurmd again
#
# Everything lives under the root (default $ZOOBOT_SLURM_ROOT or /tmp/zoobot-hpc-slurm); see slurm/README.md.
set -euo pipefail

ROOT=${ZOOBOT_SLURM_ROOT:-/tmp/zoobot-hpc-slurm}
NODES=2
CPUS_PER_NODE=2
SIZE_GIVEN=0
PREEMPTION=0
NODE=
# --preemption: a job in partition `high` preempts one in `low` (SIGTERM at once; killed and requeued by SLURM
# after the grace time). `debug` stays the default partition; its jobs are never preempted and never preempt
# (PreemptMode=OFF, the tier of `low`). PreemptMode=OFF also stops its cores being shared (OverSubscribe=FORCE:2),
# so give the nodes more CPUs instead (the tests start 5 nodes x 8 CPUs).
PREEMPT_GRACE_S=10
START_TIMEOUT_S=${ZOOBOT_SLURM_START_TIMEOUT:-60}
STOP_WAIT_S=5
# JobRequeue=0 (slurm.conf): as on sites where jobs are not requeued unless submitted with --requeue (zoobot-hpc's
# are); a node failure or a preemption then cancels any other job instead of requeueing it.
# A node that stops answering is set DOWN (and its jobs requeued with NODE_FAIL) after this (SLURM's default: 300 s);
# slurmctld pings every third of it, so a lost node is noticed 20-30 s after it stops.
SLURMD_TIMEOUT_S=20
CTLD_PORT=6817
DBD_PORT=6819
FIRST_NODE_PORT=17001
MUNGE_SOCKET=/run/munge/munge.socket.2
MYSQL_SOCKET=/run/mysqld/mysqld.sock
DB_NAME=zoobot_slurm_acct_db
DAEMON_MARKER=ZOOBOT_SLURM_DAEMON_ROOT
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    sed -n '5,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

say() { echo "cluster.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

set_paths() {
    ROOT=$(realpath -m "$ROOT")
    CONF_DIR=$ROOT/etc
    CONF=$CONF_DIR/slurm.conf
    PID_DIR=$ROOT/pids
    LOG_DIR=$ROOT/log
    STATE_FILE=$ROOT/cluster.env
}

# ---------------------------------------------------------------- daemon bookkeeping (PIDs we started)

pid_of() { cat "$PID_DIR/$1.pid" 2>/dev/null || true; }

# The executable a daemon entry runs as, e.g. slurmd-n2 -> slurmd.
comm_of() { echo "${1%%-*}"; }

# Alive: the saved PID runs the expected executable and is not a zombie waiting to be reaped.
is_alive() {
    local pid stat
    pid=$(pid_of "$1")
    [[ -n $pid ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat == "$pid ($(comm_of "$1")) "[^Z]* ]]
}

# Daemons this root started, in start order.
started_daemons() { cat "$PID_DIR/order" 2>/dev/null || true; }

launch() {
    local name=$1
    shift
    cd / # a daemon's working directory is its job steps': it must outlive whatever folder the caller is in
    setsid env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        SLURM_CONF="$CONF" "$DAEMON_MARKER=$ROOT" "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 &
    local pid=$! waited=0
    echo "$pid" >"$PID_DIR/$name.pid"
    echo "$name" >>"$PID_DIR/order"
    # Wait until the forked shell has exec'd (through setsid, env, setpriv) into the daemon, so that is_alive
    # can check its name; a launcher that dies first is reported by the caller's wait_for.
    while [[ -e /proc/$pid && $(cat "/proc/$pid/comm" 2>/dev/null) != "$(comm_of "$name")" ]] && ((waited < 100)); do
        sleep 0.05
        waited=$((waited + 1))
    done
}

log_files_of() {
    case $1 in
    munged | mariadbd) echo "$LOG_DIR/$1.out" ;;
    *) echo "$LOG_DIR/$1.log $LOG_DIR/$1.out" ;;
    esac
}

fail_start() {
    local name=$1 message=$2 file
    say "$name $message; last lines of its log:"
    for file in $(log_files_of "$name"); do
        [[ -s $file ]] && {
            echo "==> $file" >&2
            tail -n 20 "$file" >&2
        }
    done
    say "stopping what was started"
    stop_cluster >/dev/null 2>&1 || true
    exit 1
}

# wait_for NAME WHAT COMMAND...: poll COMMAND until it succeeds; fail if daemon NAME dies or time runs out.
wait_for() {
    local name=$1 what=$2
    shift 2
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        if [[ -e $PID_DIR/$name.pid ]] && ! is_alive "$name"; then
            fail_start "$name" "exited before it was $what"
        fi
        ((SECONDS < deadline)) || fail_start "$name" "was not $what within ${START_TIMEOUT_S}s"
        sleep 0.1
    done
}

wait_for_idle_nodes() {
    local node deadline=$((SECONDS + START_TIMEOUT_S))
    until all_nodes_idle; do
        for node in $(node_list); do
            is_alive "slurmd-$node" || fail_start "slurmd-$node" "exited before its node was idle"
        done
        ((SECONDS < deadline)) ||
            fail_start slurmctld "did not see all $NODES node(s) idle within ${START_TIMEOUT_S}s:" \
                "$(SLURM_CONF=$CONF sinfo -h -N -o '%N=%T' | tr '\n' ' ')"
        sleep 0.1
    done
}

terminate() {
    local name=$1 pid waited=0
    pid=$(pid_of "$name")
    if is_alive "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        while is_alive "$name" && ((waited < STOP_WAIT_S * 10)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if is_alive "$name"; then
            kill -KILL "$pid" 2>/dev/null || true
            while is_alive "$name"; do sleep 0.1; done
        fi
    fi
    rm -f "$PID_DIR/$name.pid"
}

# PIDs of processes started for this root that are still alive: slurmstepd outlives slurmd, and a daemon
# whose pid file was lost is found the same way. All of them carry this root's marker in their environment.
marked_pids() {
    local environ_file pid
    while read -r environ_file; do
        pid=${environ_file#/proc/}
        pid=${pid%/environ}
        [[ $(cat "/proc/$pid/stat" 2>/dev/null) == "$pid ("*") "[^Z]* ]] && echo "$pid"
    done < <(grep -lzxF "$DAEMON_MARKER=$ROOT" /proc/[0-9]*/environ 2>/dev/null)
    return 0
}

# The given PIDs and all their descendants (job tasks under a leftover slurmstepd).
with_descendants() {
    ps -eo pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, list, " "); for (i = 1; i <= n; i++) keep[list[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do { grown = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grown = 1 } } while (grown)
            for (p in keep) print p
        }'
}

kill_marked_leftovers() {
    local pids waited=0
    pids=$(marked_pids)
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086
    pids=$(with_descendants $pids)
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    while [[ -n $(marked_pids) ]] && ((waited < STOP_WAIT_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    pids=$(marked_pids)
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
}

# ---------------------------------------------------------------- probes

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
mysql_works() { mariadb --socket="$MYSQL_SOCKET" -uroot -e 'select 1'; }
controller_works() { SLURM_CONF=$CONF scontrol ping | grep -q 'is UP'; }
idle_node_count() { SLURM_CONF=$CONF sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l; }
all_nodes_idle() { [[ $(idle_node_count) -eq $NODES ]]; }

is_running() {
    local name daemons
    daemons=$(started_daemons)
    [[ -n $daemons && -r $STATE_FILE ]] || return 1
    for name in $daemons; do
        is_alive "$name" || return 1
    done
    controller_works >/dev/null 2>&1
}

# ---------------------------------------------------------------- configuration

node_list() {
    local i names=()
    for ((i = 1; i <= NODES; i++)); do names+=("n$i"); done
    echo "${names[*]}"
}

# Jobs resolve the node names (DDP takes MASTER_ADDR from the node list) and the daemons this host's name.
ensure_hosts_entries() {
    local name missing=()
    for name in "$(hostname -s)" $(node_list); do
        getent hosts "$name" >/dev/null || missing+=("$name")
    done
    if ((${#missing[@]} > 0)); then
        echo "127.0.0.1 ${missing[*]}" 2>/dev/null >>/etc/hosts ||
            say "warning: could not add '127.0.0.1 ${missing[*]}' to /etc/hosts; jobs need MASTER_ADDR=127.0.0.1"
    fi
}

write_configs() {
    local host memory_mb node_memory_mb node_names node_ports first_job_id
    host=$(hostname -s)
    memory_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    node_memory_mb=$((memory_mb / NODES))
    ((node_memory_mb > 0)) || node_memory_mb=1
    if ((NODES == 1)); then
        node_names=n1
        node_ports=$FIRST_NODE_PORT
    else
        node_names="n[1-$NODES]"
        node_ports="[$FIRST_NODE_PORT-$((FIRST_NODE_PORT + NODES - 1))]"
    fi
    # slurmctld -c restarts job ids; starting them from the clock keeps ids unique across restarts.
    first_job_id=$(($(date +%s) % 50000000 + 1000))

    cat >"$CONF" <<EOF
# Written by slurm/cluster.sh: a loopback cluster of $NODES virtual node(s) on $host.
ClusterName=zoobot-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=0
SlurmdTimeout=$SLURMD_TIMEOUT_S
KillWait=5
MinJobAge=300
FirstJobId=$first_job_id
MailProg=/bin/true
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/slurmd-%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
NodeName=$node_names NodeHostname=$host NodeAddr=127.0.0.1 Port=$node_ports CPUs=$CPUS_PER_NODE Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS_PER_NODE ThreadsPerCore=1 RealMemory=$node_memory_mb State=UNKNOWN
EOF
    if ((PREEMPTION)); then
        cat >>"$CONF" <<EOF
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=REQUEUE GraceTime=$PREEMPT_GRACE_S
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10 PreemptMode=OFF
EOF
    else
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2" >>"$CONF"
    fi

    # slurmdbd has no -f: it reads slurmdbd.conf from the folder of $SLURM_CONF, and insists on mode 600.
    (
        umask 077
        cat >"$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$ROOT/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=$DB_NAME
EOF
    )
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

# ---------------------------------------------------------------- start / stop

start_munged() {
    if munge_works >/dev/null 2>&1; then return; fi # a munged is already serving the socket: share it
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing: run slurm/install.sh"
    rm -f "$MUNGE_SOCKET"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    wait_for munged "serving $MUNGE_SOCKET" munge_works
}

# MariaDB's data directory. mariadbd runs as the mysql user, which must be able to reach it: $ROOT/db, unless a parent
# of the root is closed to other users (e.g. a `mktemp -d` folder, mode 700); then a folder under /var/tmp that
# $ROOT/db links to.
mariadb_datadir() {
    if setpriv --reuid=mysql --regid=mysql --clear-groups test -x "$ROOT" 2>/dev/null; then
        echo "$ROOT/db"
        return
    fi
    local dir=/var/tmp/zoobot-hpc-slurm-db/$(printf %s "$ROOT" | sha256sum | cut -c1-16)
    mkdir -p "$dir" && chmod 755 /var/tmp/zoobot-hpc-slurm-db || die "cannot create MariaDB's data directory $dir"
    [[ -L $ROOT/db ]] || rm -rf "$ROOT/db"
    ln -sfn "$dir" "$ROOT/db"
    say "the mysql user cannot reach $ROOT (a parent folder is closed to other users): MariaDB's data is in $dir"
    echo "$dir"
}

start_mariadbd() {
    if mysql_works >/dev/null 2>&1; then return; fi # a mariadbd is already serving the socket: share it
    local datadir
    datadir=$(mariadb_datadir) || exit 1
    if [[ ! -d $datadir/mysql ]]; then
        rm -rf "$datadir"
        mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=socket \
            --skip-test-db >>"$LOG_DIR/mariadbd.out" 2>&1 ||
            fail_start mariadbd "could not initialise its data directory $datadir"
    fi
    rm -f "$MYSQL_SOCKET"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    launch mariadbd mariadbd --user=mysql --datadir="$datadir" --socket="$MYSQL_SOCKET" \
        --bind-address=127.0.0.1 --skip-networking
    wait_for mariadbd "answering on $MYSQL_SOCKET" mysql_works
}

start_cluster() {
    [[ $(id -u) -eq 0 ]] || die "start must run as root (the daemons run as root, munge and mysql)"
    local binary
    for binary in slurmctld slurmd slurmdbd sinfo munged mariadbd mariadb-install-db; do
        command -v "$binary" >/dev/null || die "$binary is not installed: run slurm/install.sh"
    done
    if is_running; then
        # shellcheck disable=SC1090
        source "$STATE_FILE"
        if ((SIZE_GIVEN)) && [[ $RUNNING_NODES != "$NODES" || $RUNNING_CPUS_PER_NODE != "$CPUS_PER_NODE" ]]; then
            die "already running at $ROOT with $RUNNING_NODES node(s) x $RUNNING_CPUS_PER_NODE CPUs; stop it first"
        fi
        if ((PREEMPTION)) && [[ ${RUNNING_PREEMPTION:-0} != 1 ]]; then
            die "already running at $ROOT without --preemption; stop it first"
        fi
        echo "SLURM cluster already running at $ROOT ($RUNNING_NODES nodes); source $ROOT/env.sh"
        return
    fi
    ((NODES >= 1)) || die "--nodes must be >= 1, got $NODES"
    ((CPUS_PER_NODE >= 1)) || die "--cpus-per-node must be >= 1, got $CPUS_PER_NODE"
    stop_cluster >/dev/null 2>&1 || true # clears stale pid files and half-started daemons of this root

    local port started_at=$SECONDS
    for port in "$CTLD_PORT" "$DBD_PORT" $(seq "$FIRST_NODE_PORT" $((FIRST_NODE_PORT + NODES - 1))); do
        port_open "$port" && die "port $port is already in use (another slurm daemon?): $(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1)"
    done

    mkdir -p "$CONF_DIR" "$PID_DIR" "$LOG_DIR" "$ROOT/run" "$ROOT/state" "$ROOT/spool" 2>/dev/null ||
        die "cannot create the cluster root --root $ROOT"
    rm -rf "$ROOT/state"/* "$ROOT/spool"/*
    rm -f "$PID_DIR/order"
    write_configs
    ensure_hosts_entries

    start_munged
    start_mariadbd
    mariadb --socket="$MYSQL_SOCKET" -uroot -e "DROP DATABASE IF EXISTS $DB_NAME" ||
        die "could not reset the accounting database $DB_NAME"

    launch slurmdbd slurmdbd -D
    wait_for slurmdbd "listening on port $DBD_PORT" port_open "$DBD_PORT"
    launch slurmctld slurmctld -D -c -f "$CONF"
    wait_for slurmctld "answering scontrol ping" controller_works
    local node
    for node in $(node_list); do
        launch "slurmd-$node" slurmd -D -N "$node" -f "$CONF"
    done
    wait_for_idle_nodes

    printf 'export SLURM_CONF=%q\nexport ZOOBOT_SLURM_ROOT=%q\n' "$CONF" "$ROOT" >"$ROOT/env.sh"
    printf 'RUNNING_NODES=%s\nRUNNING_CPUS_PER_NODE=%s\nRUNNING_PREEMPTION=%s\n' "$NODES" "$CPUS_PER_NODE" "$PREEMPTION" \
        >"$STATE_FILE"
    echo "SLURM cluster up at $ROOT: nodes $(node_list) x $CPUS_PER_NODE CPUs in $((SECONDS - started_at))s;" \
        "source $ROOT/env.sh"
}

cancel_all_jobs() {
    controller_works >/dev/null 2>&1 || return 0
    local jobs waited=0
    jobs=$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null || true)
    [[ -n $jobs ]] || return 0
    # shellcheck disable=SC2086
    SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
    while [[ -n $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && ((waited < 150)); do
        sleep 0.1
        waited=$((waited + 1))
    done
}

stop_cluster() {
    local name daemons
    daemons=$(started_daemons)
    [[ -n $daemons ]] && cancel_all_jobs
    # Reverse start order: slurmds while slurmctld is still up (they ignore TERM without it), then the rest.
    for name in $(echo "$daemons" | tac); do
        terminate "$name"
    done
    kill_marked_leftovers
    rm -f "$PID_DIR"/*.pid "$PID_DIR/order" "$STATE_FILE"
    echo "SLURM cluster at $ROOT stopped"
}

show_status() {
    local name daemons
    daemons=$(started_daemons)
    if [[ -z $daemons ]]; then
        echo "SLURM cluster at $ROOT: not running"
        return 1
    fi
    for name in $daemons; do
        if is_alive "$name"; then
            echo "$name: running (pid $(pid_of "$name"))"
        else
            echo "$name: NOT running"
        fi
    done
    if is_running; then
        SLURM_CONF=$CONF sinfo -N -o '%N %T %c %m' || true
        SLURM_CONF=$CONF squeue || true
        return 0
    fi
    echo "SLURM cluster at $ROOT: not (fully) running; 'cluster.sh stop' then 'start' to restart it"
    return 1
}

# ---------------------------------------------------------------- node failure

# slurmstepd PIDs of a node: each listens on a socket in that node's spool folder.
stepd_pids_of() {
    ss -Hxlp 2>/dev/null | awk -v spool="$ROOT/spool/slurmd-$1/" '
        index($0, spool) { while (match($0, /pid=[0-9]+/)) { print substr($0, RSTART + 4, RLENGTH - 4); $0 = substr($0, RSTART + RLENGTH) } }' |
        sort -u
}

node_pids() {
    local pids
    pids="$(pid_of "slurmd-$1") $(stepd_pids_of "$1")"
    # shellcheck disable=SC2086
    [[ -n ${pids// /} ]] && with_descendants $pids
    return 0
}

require_node() {
    local nodes
    nodes=$(started_daemons | sed -n 's/^slurmd-//p' | tr '\n' ' ')
    [[ -n ${NODE:-} ]] || die "$COMMAND needs a node name (nodes at $ROOT: ${nodes:-none})"
    [[ -e $PID_DIR/slurmd-$NODE.pid ]] || die "no slurmd-$NODE was started at $ROOT (nodes: ${nodes:-none})"
}

# As a node that lost power or its network looks from the others: its slurmd, its job steps and their tasks stop
# at once (SIGSTOP: their connections stay open, so peers block instead of seeing a reset). slurmctld sets the node
# DOWN after SlurmdTimeout and requeues its jobs (NODE_FAIL, jobs that allow requeue). `reboot-node` ends it.
fail_node() {
    require_node
    local pids
    command -v ss >/dev/null || die "fail-node needs ss (iproute2) to find the node's job steps"
    pids=$(node_pids "$NODE")
    # shellcheck disable=SC2086
    kill -STOP $pids 2>/dev/null || true # a task may have just exited
    # SIGSTOP takes effect when the process is next scheduled: on a busy machine that is not at once
    local waited
    for waited in $(seq 50); do
        [[ $(cat "/proc/$(pid_of "slurmd-$NODE")/stat" 2>/dev/null) == *") T "* ]] && break
        ((waited < 50)) || die "slurmd-$NODE did not stop within 5 s"
        sleep 0.1
    done
    echo "node $NODE stopped answering (processes $(echo $pids | tr '\n' ' ')); SLURM sets it DOWN within" \
        "$((SLURMD_TIMEOUT_S * 3 / 2))s"
}

# Power the node back on: every process that ran there is gone, its slurmd starts afresh and registers;
# ReturnToService=2 makes a node that was DOWN for not responding usable again.
reboot_node() {
    require_node
    local pids
    pids=$(node_pids "$NODE")
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    while is_alive "slurmd-$NODE"; do sleep 0.1; done
    rm -f "$PID_DIR/slurmd-$NODE.pid"
    sed -i "/^slurmd-$NODE\$/d" "$PID_DIR/order"
    launch "slurmd-$NODE" slurmd -D -N "$NODE" -f "$CONF"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until [[ $(SLURM_CONF=$CONF sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1) =~ ^(idle|mixed|allocated)$ ]]; do
        is_alive "slurmd-$NODE" || die "slurmd-$NODE exited after the reboot: see $LOG_DIR/slurmd-$NODE.log"
        ((SECONDS < deadline)) || die "node $NODE did not come back within ${START_TIMEOUT_S}s"
        sleep 0.2
    done
    echo "node $NODE rebooted: $(SLURM_CONF=$CONF sinfo -h -N -n "$NODE" -o %T | head -n 1)"
}

# ---------------------------------------------------------------- command line

COMMAND=${1:-}
[[ -n $COMMAND ]] || usage
shift
while (($# > 0)); do
    case $1 in
    --nodes)
        NODES=${2:?--nodes needs a value}
        SIZE_GIVEN=1
        shift 2
        ;;
    --cpus-per-node)
        CPUS_PER_NODE=${2:?--cpus-per-node needs a value}
        SIZE_GIVEN=1
        shift 2
        ;;
    --preemption)
        PREEMPTION=1
        shift
        ;;
    --root)
        ROOT=${2:?--root needs a value}
        shift 2
        ;;
    *)
        [[ $COMMAND == *-node && -z ${NODE:-} && $1 != -* ]] || die "unknown option '$1' (see: $HERE/cluster.sh with no arguments)"
        NODE=$1
        shift
        ;;
    esac
done
[[ $NODES =~ ^[0-9]+$ ]] || die "--nodes must be a positive integer, got '$NODES'"
[[ $CPUS_PER_NODE =~ ^[0-9]+$ ]] || die "--cpus-per-node must be a positive integer, got '$CPUS_PER_NODE'"
set_paths

case $COMMAND in
start) start_cluster ;;
stop) stop_cluster ;;
status) show_status ;;
fail-node) fail_node ;;
reboot-node) reboot_node ;;
env)
    [[ -r $CONF ]] || die "no cluster configuration at $CONF: run 'cluster.sh start' first"
    printf 'export SLURM_CONF=%q\nexport ZOOBOT_SLURM_ROOT=%q\n' "$CONF" "$ROOT"
    ;;
*) usage ;;
esac
