#!/usr/bin/env bash
# SLURM for real, on this one machine: installs Debian's slurm-wlm and munge, writes a one-node
# slurm.conf (the node from `slurmd -C`, all state under a temporary folder), starts munged,
# slurmctld and slurmd, and runs accel under them on MiniLM for a few steps:
#   1. `srun -n 2 --mpi=pmix accel train`: the losses equal `accel launch --nproc 2`'s
#   2. `sbatch` of the same: the job completes with those losses; `salloc -n 2 accel launch ...`
#      with no --nproc starts SLURM_NTASKS ranks, with those losses too
#   3. `kill -9` of one task under srun: the step ends within 10 s, no accel process is left
#   4. preemption: `scancel --signal=USR1` makes the job checkpoint and exit 75 (accel's
#      documented code), and a resubmitted job resumes from that step with no step lost
#   5. two nodes: the multi-host check's two network namespaces as two hosts (a slurmd in each),
#      `srun -N 2 -n 2 --mpi=pmix`: the same losses again
# The daemons are stopped by the PIDs it started. Where they cannot start (no systemd is needed,
# but a container may forbid what munged or slurmd need), it says why and skips.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
skip() { echo "slurm_check: SKIPPED: $*"; exit 0; }
fail() { echo "slurm_check: FAILED: $*" >&2; exit 1; }
apt_install slurm-wlm munge || skip "Debian's slurm-wlm and munge could not be installed"
cargo build --release --quiet --bin accel
accel="$repo_root/target/release/accel"

work="$(mktemp -d /tmp/accel-slurm.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  netns_hosts_down
  rm -rf "$work"
}
trap cleanup EXIT
show_logs() { for f in "$work"/*.log; do echo "--- $f"; tail -n 20 "$f"; done >&2; }

# munge: its own key, socket and state under $work, run as the munge user Debian's package made.
mkdir -p "$work/munge"
chown munge: "$work/munge" 2>/dev/null || true
dd if=/dev/urandom bs=1 count=1024 of="$work/munge/munge.key" status=none
chown munge: "$work/munge/munge.key" 2>/dev/null || true
chmod 400 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
as_munge=()
id munge >/dev/null 2>&1 && as_munge=(runuser -u munge --)
"${as_munge[@]}" munged --foreground --force --key-file="$work/munge/munge.key" --socket="$socket" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munged.log" --seed-file="$work/munge/seed" \
  >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { show_logs; skip "munged did not start"; }
munge --socket="$socket" -n | unmunge --socket="$socket" >/dev/null || { show_logs; skip "munge cannot encode and decode here"; }

# slurm.conf: this node as `slurmd -C` sees it, ports off the defaults so a real SLURM is untouched.
node="$(slurmd -C | head -n 1)"
host="$(hostname -s)"
cat > "$work/slurm.conf" <<EOF
ClusterName=accelcheck
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
$node NodeAddr=127.0.0.1
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p "$work/state" "$work/spool"
export SLURM_CONF="$work/slurm.conf"
slurmctld -D -i -f "$SLURM_CONF" >/dev/null 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >/dev/null 2>&1 &
pids+=($!)
up=""
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -q -E '^(idle|mixed)'; then up=1; break; fi
  sleep 0.2
done
[ -n "$up" ] || { show_logs; skip "slurmctld and slurmd did not bring the node up"; }
echo "slurm_check: $(sinfo --version) with one node: $node"

steps=6
# The run every check shares; each adds its own steps and saving (clap takes a flag once).
run_args=(train --config configs/mrpc.toml --per-device-train-batch-size 4
  --set logging_steps=1 --set eval_strategy=no --set report_to=none)
short=(--max-steps "$steps" --set save_strategy=no)
losses() { grep -o '"loss":[^,}]*' "$1/metrics.jsonl" | cut -d: -f2 | tr '\n' ' '; }

# 1. srun -n 2 --mpi=pmix against accel launch --nproc 2.
"$accel" launch --nproc 2 "${run_args[@]}" "${short[@]}" --output-dir "$work/launched" > "$work/launched.out" 2>&1 \
  || { tail -n 30 "$work/launched.out"; fail "accel launch --nproc 2"; }
srun -n 2 --mpi=pmix --cpus-per-task=1 "$accel" "${run_args[@]}" "${short[@]}" --output-dir "$work/srun" > "$work/srun.out" 2>&1 \
  || { tail -n 30 "$work/srun.out"; show_logs; fail "srun -n 2 --mpi=pmix"; }
grep -q "processes: 2" "$work/srun.out" || { tail -n 30 "$work/srun.out"; fail "srun's run did not see 2 ranks"; }
[ "$(losses "$work/srun")" = "$(losses "$work/launched")" ] \
  || fail "srun's losses ($(losses "$work/srun")) differ from accel launch's ($(losses "$work/launched"))"
echo "slurm_check: srun -n 2 --mpi=pmix: the losses of accel launch --nproc 2: $(losses "$work/srun")"
grep -a -m1 "processes:" "$work/srun.out" | sed 's/^/slurm_check:   /'

# 2. sbatch of the same, waited for.
cat > "$work/job.sh" <<EOF
#!/bin/bash
#SBATCH --ntasks=2 --cpus-per-task=1 --output=$work/sbatch.out
srun --mpi=pmix "$accel" ${run_args[*]} ${short[*]} --output-dir "$work/sbatch"
EOF
sbatch --wait "$work/job.sh" > /dev/null || { tail -n 30 "$work/sbatch.out"; fail "sbatch"; }
[ "$(losses "$work/sbatch")" = "$(losses "$work/launched")" ] || fail "sbatch's losses differ from accel launch's"
echo "slurm_check: sbatch: completed, the same losses"

# 2b. Inside an allocation, accel launch with no --nproc starts SLURM_NTASKS ranks through mpirun.
salloc -n 2 "$accel" launch "${run_args[@]}" "${short[@]}" --output-dir "$work/salloc" > "$work/salloc.out" 2>&1 \
  || { tail -n 30 "$work/salloc.out"; fail "salloc -n 2 accel launch"; }
grep -q "processes: 2" "$work/salloc.out" || { tail -n 30 "$work/salloc.out"; fail "accel launch in salloc -n 2 did not start 2 ranks"; }
[ "$(losses "$work/salloc")" = "$(losses "$work/launched")" ] || fail "salloc's losses differ from accel launch's"
echo "slurm_check: salloc -n 2 accel launch (no --nproc): 2 ranks, the same losses"
grep -a -m1 "accel launch:" "$work/salloc.out" | sed 's/^/slurm_check:   /' || true

# 3. kill -9 of one task: the step ends within 10 s and no accel process is left.
srun -n 2 --mpi=pmix --cpus-per-task=1 "$accel" "${run_args[@]}" --max-steps 100000 --set save_strategy=no --output-dir "$work/killed" \
  > "$work/killed.out" 2>&1 &
srun_pid=$!
tasks() { pgrep -f "^$accel .*--output-dir $work/killed" || true; }
victim=""
for _ in $(seq 600); do
  victim="$(tasks | tail -n 1)"
  [ -n "$victim" ] && grep -q '"loss"' "$work/killed/metrics.jsonl" 2>/dev/null && break
  sleep 0.1
done
[ -n "$victim" ] || { tail -n 20 "$work/killed.out"; fail "the task to kill never started a step"; }
killed_at=$SECONDS
kill -9 "$victim"
rc=0
wait "$srun_pid" || rc=$?
took=$((SECONDS - killed_at))
left="$(tasks)"
[ -z "$left" ] || fail "processes left after kill -9 of a task: $left"
[ "$took" -le 10 ] || fail "srun took $took s to end the step after kill -9 of a task"
echo "slurm_check: kill -9 of one task: srun exited $rc after ${took} s, no process left"

# 4. Preemption: USR1 to the job's tasks, a checkpoint, the documented exit code; a new job resumes.
cat > "$work/preempt.sh" <<EOF
#!/bin/bash
#SBATCH --ntasks=2 --cpus-per-task=1 --output=$work/preempt-%j.out
srun --mpi=pmix "$accel" ${run_args[*]} --max-steps 100 --set save_strategy=steps --set save_steps=1000 \
  --output-dir "$work/preempted" --resume-from-checkpoint latest-if-any
EOF
job="$(sbatch --parsable "$work/preempt.sh")"
logged() { grep -c '"loss"' "$work/preempted/metrics.jsonl" 2>/dev/null || true; }
for _ in $(seq 600); do
  [ "$(logged)" -ge 3 ] 2>/dev/null && break
  sleep 0.1
done
[ "$(logged)" -ge 3 ] 2>/dev/null || { tail -n 20 "$work"/preempt-"$job".out; fail "the job to preempt never logged 3 steps"; }
scancel --signal=USR1 "$job"
for _ in $(seq 600); do squeue -h -j "$job" 2>/dev/null | grep -q . || break; sleep 0.1; done
state="$(scontrol show job "$job" 2>/dev/null | grep -o 'ExitCode=[0-9:]*' | head -n 1 || true)"
checkpoint="$(ls -d "$work/preempted"/checkpoint-* 2>/dev/null | head -n 1)"
[ -n "$checkpoint" ] || { cat "$work"/preempt-"$job".out; fail "no checkpoint after USR1"; }
stopped="${checkpoint##*-}"
grep -q "preempted" "$work/preempt-$job.out" || { tail -n 20 "$work/preempt-$job.out"; fail "the job did not say it was preempted"; }
echo "slurm_check: scancel --signal=USR1: checkpoint at step $stopped, job $state"
job2="$(sbatch --parsable --wait "$work/preempt.sh" || true)"
first="$(grep -o '"step":[0-9]*' "$work/preempted/metrics.jsonl" | cut -d: -f2 | awk -v s="$stopped" '$1 > s' | head -n 1)"
[ "$first" = "$((stopped + 1))" ] || fail "the resubmitted job's first step is $first, not $((stopped + 1))"
echo "slurm_check: resubmitted: resumed from step $stopped, first step $first, no step lost"

# 5. Two nodes: the multi-host check's network namespaces as two hosts, one slurmd in each (named
#    with -N), a second slurmctld on the bridge, and srun -N 2 from the first "host".
two_nodes() {
  local why conf="$work/two/slurm.conf" up="" ns i
  if ! why="$(netns_hosts_up)"; then
    echo "slurm_check: two nodes: SKIPPED: cannot create network namespaces here ($why)"
    return 0
  fi
  mkdir -p "$work/two/state" "$work/two/spool-$netns_h1" "$work/two/spool-$netns_h2"
  sed -e 's/^ClusterName=.*/ClusterName=accelcheck2/' -e "s/^SlurmctldHost=.*/SlurmctldHost=$host(198.18.7.1)/" \
      -e 's/^SlurmctldPort=.*/SlurmctldPort=16827/' -e 's/^SlurmdPort=.*/SlurmdPort=16828/' \
      -e "s|^StateSaveLocation=.*|StateSaveLocation=$work/two/state|" \
      -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$work/two/spool-%n|" -e "s|^SlurmdPidFile=.*|SlurmdPidFile=$work/two/slurmd-%n.pid|" \
      -e "s|^SlurmctldPidFile=.*|SlurmctldPidFile=$work/two/slurmctld.pid|" \
      -e "s|^SlurmctldLogFile=.*|SlurmctldLogFile=$work/two-slurmctld.log|" -e "s|^SlurmdLogFile=.*|SlurmdLogFile=$work/two-slurmd-%n.log|" \
      -e '/^NodeName=/d' -e '/^PartitionName=/d' "$SLURM_CONF" > "$conf"
  cat >> "$conf" <<EOF2
NodeName=$netns_h1 NodeAddr=198.18.7.11 CPUs=1 RealMemory=2000
NodeName=$netns_h2 NodeAddr=198.18.7.12 CPUs=1 RealMemory=2000
PartitionName=two Nodes=$netns_h1,$netns_h2 Default=YES MaxTime=INFINITE State=UP
EOF2
  slurmctld -D -i -f "$conf" >/dev/null 2>&1 &
  pids+=($!)
  for ns in "$netns_h1" "$netns_h2"; do
    # Each node its own folder for PMIx's per-step files (two nodes share this machine's /tmp), set
    # in an mpi.conf beside its own copy of slurm.conf, where slurmd looks for it.
    mkdir -p "$work/two/$ns/pmix"
    cp "$conf" "$work/two/$ns/slurm.conf"
    echo "PMIxCliTmpDirBase=$work/two/$ns/pmix" > "$work/two/$ns/mpi.conf"
    # nsenter enters the network namespace only (ip netns exec would remount /sys, without the
    # cgroup file system slurmd needs).
    nsenter --net="/run/netns/$ns" slurmd -D -N "$ns" -f "$work/two/$ns/slurm.conf" >/dev/null 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 100); do
    [ "$(SLURM_CONF="$conf" sinfo -h -o '%T %D' 2>/dev/null)" = "idle 2" ] && { up=1; break; }
    sleep 0.2
  done
  [ -n "$up" ] || { show_logs; echo "slurm_check: two nodes: SKIPPED: the two slurmd did not both come up"; return 0; }
  local nodes
  nodes="$(nsenter --net="/run/netns/$netns_h1" env SLURM_CONF="$work/two/$netns_h1/slurm.conf" \
    srun -N 2 -n 2 sh -c 'echo $SLURMD_NODENAME' | sort | tr '\n' ' ')"
  [ "$nodes" = "$netns_h1 $netns_h2 " ] || fail "srun -N 2 -n 2 placed its tasks on: $nodes"
  # OpenMPI's TCP transport on the bridge's subnet; srun from the first "host", as from a login node.
  nsenter --net="/run/netns/$netns_h1" env SLURM_CONF="$work/two/$netns_h1/slurm.conf" OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$netns_subnet" \
    srun -N 2 -n 2 --mpi=pmix "$accel" "${run_args[@]}" "${short[@]}" --output-dir "$work/two-nodes" \
    > "$work/two-nodes.out" 2>&1 || { tail -n 30 "$work/two-nodes.out"; show_logs; fail "srun -N 2 across the two namespaces"; }
  [ "$(losses "$work/two-nodes")" = "$(losses "$work/launched")" ] \
    || fail "srun -N 2's losses ($(losses "$work/two-nodes")) differ from accel launch's"
  echo "slurm_check: srun -N 2 -n 2 --mpi=pmix, one task on each of $nodes(namespace nodes, TCP between them): the same losses"
}
two_nodes
echo "slurm_check: passed"
