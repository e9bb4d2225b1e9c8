# shellcheck shell=bash
# How scripts/speedrun.slurm starts a stage and stops it early, preemption-safe. Sourced after scripts/recipe.sh:
# LAUNCH=(launch -m picochat.cli) makes train_stage run `srun torchrun` on every node, and stage_stopped here
# requeues the job. The USR1 that Slurm sends before the time limit (--signal=B:USR1@300) makes every training
# process checkpoint and exit, and the job requeues itself; a SIGTERM alone (scancel, preemption) also
# checkpoints, without the requeue.
say() { echo "$NAME: $*"; }

# The batch shell gets the warning signal; srun forwards a signal it receives to every process of its step
# on every node. The torchrun agents ignore it (see launch) and picochat's workers checkpoint and exit 0.
TRAINING_PID="" ASKING_PID="" STOP_SIGNAL=""  # USR1 (the time-limit warning): requeue; TERM alone: only stop
on_stop_signal() {
    say "SIG$1: asking every training process to checkpoint and exit"
    [ "$STOP_SIGNAL" = USR1 ] || STOP_SIGNAL=$1
    if [ -n "$TRAINING_PID" ] && [ -z "$ASKING_PID" ]; then
        ask_to_stop "$TRAINING_PID" &
        ASKING_PID=$!
    fi
}
# ask_to_stop SRUN_PID: USR1 now and every 30 s while that srun lives. A worker still starting up (imports,
# loading a checkpoint) has not installed its handlers yet and ignores the signal, as it inherited from
# torchrun; a later one reaches it. /proc's comm check: never signal a recycled pid.
ask_to_stop() {
    while [ "$(cat "/proc/$1/comm" 2>/dev/null)" = srun ]; do
        kill -USR1 "$1" 2>/dev/null
        sleep 30
    done
}
trap 'on_stop_signal USR1' USR1
trap 'on_stop_signal TERM' TERM

# launch ARGS...: one torchrun per node, in the background (so that the traps above run while it trains); they
# meet at a c10d rendezvous on the head node. Each torchrun ignores USR1 and TERM (an ignored signal stays
# ignored through exec; --signals-to-handle without SIGTERM keeps torchrun from installing its own TERM handler,
# which would kill the workers after 30 s and exit 1): it must outlive its workers while they checkpoint. The
# workers inherit "ignored" too, but picochat's StopSignal installs its own handlers.
launch() {
    [ -z "$STOP_SIGNAL" ] || stop_here "a stop signal came before the stage started"
    srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        bash -c 'trap "" USR1 TERM; exec "$@"' torchrun \
        torchrun --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node="$GPUS_PER_NODE" --max-restarts=0 \
        --signals-to-handle=SIGINT,SIGHUP,SIGQUIT \
        --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$RDZV_PORT" --rdzv-id="$SLURM_JOB_ID" "$@" &
    TRAINING_PID=$!
    local status
    while true; do  # a trapped signal interrupts `wait` (>128 with srun still alive): wait again
        wait "$TRAINING_PID"
        status=$?
        if [ "$status" -le 128 ] || ! kill -0 "$TRAINING_PID" 2>/dev/null; then break; fi
    done
    TRAINING_PID=""
    [ -z "$ASKING_PID" ] || kill "$ASKING_PID" 2>/dev/null
    ASKING_PID=""
    return "$status"
}

# stage_stopped STAGE STATUS (train_stage calls it): a failure ends the job; a stage that exited cleanly before
# its end was stopped by a signal, and checkpointed.
stage_stopped() {
    [ "$2" = 0 ] || { say "$1: training failed (exit $2); not requeueing"; exit "$2"; }
    stop_here "$1: stopped with a checkpoint before the end"
}
# stop_here WHY: the end of this run of the job. Requeued unless a SIGTERM alone stopped it: that is a
# scancel (the user wants it to stop) or a preemption (Slurm requeues a --requeue job itself).
stop_here() {
    trap '' USR1 TERM  # nothing is left to forward
    if [ "$STOP_SIGNAL" = TERM ]; then
        say "$1 (SIGTERM: scancel or preemption); not requeueing it here: sbatch this script again to resume"
        exit 0
    fi
    say "$1; requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID" || die "could not requeue job $SLURM_JOB_ID; sbatch this script again to resume"
    exit 0
}

preflight() {  # on every node, before any GPU hour: scripts/slurm_preflight.sh
    # Written here, looked for on every node: proves PICOCHAT_HOME is one shared filesystem.
    local marker="$PICOCHAT_HOME/.slurm-preflight-$SLURM_JOB_ID"
    touch "$marker" 2>/dev/null || die "PICOCHAT_HOME=$PICOCHAT_HOME is not writable from $(hostname -s)"
    SHARED_MARKER="$marker" DEVICE="$DEVICE" GPUS_PER_NODE="$GPUS_PER_NODE" \
        srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        bash "$REPO/scripts/slurm_preflight.sh"
    local status=$?
    rm -f "$marker"
    [ "$status" -eq 0 ] || exit 2  # the failing node printed its one-line error
}
