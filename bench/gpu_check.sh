#!/usr/bin/env bash
# Every GPU measurement the project has prepared, in one run that fits in 10 minutes on one
# H100, every figure written to one JSON file (default $OUT/gpu_check.json, else
# ./gpu_check.json):
#
#   bash bench/gpu_check.sh [OUT_JSON]
#
# Steps, in order of value, each under its own time limit (a step that fails or runs out
# of time is recorded with its exit code and output tail, and the next one still runs):
#   env          nvidia-smi, torch / triton versions, the device's SMs and L2
#   kernels      tests/triton_cases.py compiled on CUDA: the fused forward (deterministic
#                and atomic), backward and combine against the torch reference
#   moe_kernel   bench/moe_kernel.py: Qwen3 / GLM shapes, 1..16,384 tokens, 0/25/50 % zero
#                picks, uniform routing (fused, fused_atomic, expert0, te if installed, torch)
#   layer_stack  bench/moe_kernel.py --layer-stack (attention + ZEDA MoE, Qwen3 shapes)
#   skewed       the moe_kernel rows again with Zipf-skewed routing
#   pools        pytest -m gpu (vLLM nccl / ipc weight sync, megatron on CUDA): needs ray and
#                a CUDA vLLM, which the lent machines do not have; recorded as not run then
#   roofline     bench/roofline.py for the same rows (the model, to set beside the figures)
#
# Needs python3 with a CUDA torch and triton. The package is not installed: zeda_kernels is
# imported from the repository root.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULT="${1:-${OUT:-.}/gpu_check.json}"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch, triton, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check: $PY has no CUDA device (or no torch / triton): run this on a GPU machine" >&2
    exit 2
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/steps"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
cd "$REPO"

# run_step NAME LIMIT_S COMMAND...: the command's output to steps/NAME.log, its exit code,
# seconds and limit to steps/NAME.meta.
run_step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$WORK/steps/$name.log" 2>&1
    local rc=$?
    printf '{"rc": %d, "seconds": %d, "limit_s": %d}\n' "$rc" $((SECONDS - start)) "$limit" \
        >"$WORK/steps/$name.meta"
    tail -n 3 "$WORK/steps/$name.log"
    echo "   rc=$rc in $((SECONDS - start)) s"
}

run_step env 30 "$PY" - <<'EOF'
import json, subprocess, torch, triton
props = torch.cuda.get_device_properties(0)
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
                  "sms": props.multi_processor_count, "l2_bytes": getattr(props, "L2_cache_size", None),
                  "memory_bytes": props.total_memory, "torch": torch.__version__,
                  "triton": triton.__version__, "nvidia_smi": smi}))
EOF
run_step kernels 120 "$PY" -m pytest -q -p no:cacheprovider tests/triton_cases.py
run_step moe_kernel 270 "$PY" bench/moe_kernel.py --routing uniform --json "$WORK/moe_kernel.json"
run_step layer_stack 60 "$PY" bench/moe_kernel.py --layer-stack --tokens 4096 \
    --json "$WORK/layer_stack.json"
run_step skewed 60 "$PY" bench/moe_kernel.py --routing skewed --json "$WORK/skewed.json"
if "$PY" -c "import ray, vllm" >/dev/null 2>&1; then
    run_step pools 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
else
    echo "pools: not run (ray or a CUDA vLLM is not installed here)" >"$WORK/steps/pools.log"
    echo '{"rc": null, "seconds": 0, "not_run": "ray or vllm missing"}' >"$WORK/steps/pools.meta"
fi
run_step roofline 45 "$PY" bench/roofline.py --routing uniform,skewed --json "$WORK/roofline.json"

"$PY" - "$WORK" "$RESULT" <<'EOF'
import json, pathlib, sys
work, result = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
report = {"steps": {}}
for meta in sorted((work / "steps").glob("*.meta")):
    name = meta.name.removesuffix(".meta")
    step = json.loads(meta.read_text())
    step["log_tail"] = (work / "steps" / f"{name}.log").read_text()[-4000:]
    report["steps"][name] = step
try:
    report["env"] = json.loads(report["steps"]["env"]["log_tail"].strip().splitlines()[-1])
except (KeyError, ValueError, IndexError):
    report["env"] = None
for name in ("moe_kernel", "layer_stack", "skewed", "roofline"):
    path, log = work / f"{name}.json", work / "steps" / f"{name}.log"
    if path.exists():
        report[name] = json.loads(path.read_text())
    elif log.exists():  # cut off by its time limit: the rows it printed as it went
        lines = [l for l in log.read_text().splitlines() if l.startswith("{")]
        report[name] = {"partial": True, "rows": [json.loads(l) for l in lines]}
    else:
        report[name] = None
result.parent.mkdir(parents=True, exist_ok=True)
result.write_text(json.dumps(report, indent=1))
failed = [n for n, s in report["steps"].items() if s.get("rc") not in (0, None)]
print(f"gpu_check: {len(report['steps'])} steps, failed: {failed or 'none'}; wrote {result}")
sys.exit(1 if failed else 0)
EOF
