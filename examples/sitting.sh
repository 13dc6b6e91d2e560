# One sitting of an example comparison; sourced by the example scripts, not run.
#
#   run_sitting OUT COMPARE-ARGS...
#
# With DRY_RUN set: prints the comparison's dry run and stops. Otherwise: saves the dry run as
# OUT/dry_run-<time>.txt, appends the machine, the rows and the start to OUT/machine.txt, runs the
# comparison (which resumes, reusing every cached cell) and appends its finish.
run_sitting() {
    local out=$1
    shift
    local influence=${INFLUENCE:-influence}
    if [[ -n "${DRY_RUN:-}" ]]; then
        exec $influence compare "$@" --dry-run
    fi
    mkdir -p "$out"
    $influence compare "$@" --dry-run | tee "$out/dry_run-$(date -u +%Y%m%dT%H%M).txt"
    { echo "machine: $(nproc) CPU cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM, $(uname -srm)"
      ${PYTHON:-python} -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu", "threads", torch.get_num_threads())'
      echo "selectors: ${SELECTORS:-}"
      echo "started: $(date -u +%FT%TZ)"; } >> "$out/machine.txt"
    $influence compare "$@"
    echo "finished: $(date -u +%FT%TZ)" >> "$out/machine.txt"
}
