"""models/trtllm: the GPU model repository's scripts, run here against stand-ins.

No GPU and no TensorRT-LLM image here, so the image's pieces are replaced by small fakes that
behave as documented: a template set shaped like tensorrtllm_backend v0.19's (placeholders where
the real ones have them), a fill_template.py with its semantics (``string.Template``
``safe_substitute`` of ``key:value`` pairs, refusing a key its file lacks), and
convert_checkpoint.py, trtllm-build, generate_xgrammar_tokenizer_info.py, mpirun and nvidia-smi
that record their arguments. The scripts themselves run for real (bash).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from app.config import REPO_ROOT
from app.inference.backend import GenerationParams
from app.inference.chat import ChatRequest, Message
from app.inference.templates import load_template
from app.inference.tokens import load_tokenizer
from app.inference.triton import build_inputs

TRTLLM = REPO_ROOT / "models" / "trtllm"
REFERENCE = REPO_ROOT / "models" / "scripted" / "ensemble" / "config.pbtxt"
SCRIPTED_TOKENIZER = REPO_ROOT / "models" / "tokenizers" / "scripted"
TRITON_TYPES = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32", "FP32": "TYPE_FP32",
                "UINT64": "TYPE_UINT64", "BOOL": "TYPE_BOOL"}  # fmt: skip


def _load_check_interface() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_interface", TRTLLM / "check_interface.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check_interface()

FILL_TEMPLATE = """\
import argparse
import sys
from string import Template

parser = argparse.ArgumentParser()
parser.add_argument("file_path")
parser.add_argument("substitutions")
parser.add_argument("-i", "--in_place", action="store_true")
args = parser.parse_args()
with open(args.file_path) as f:
    text = f.read()
values = dict(pair.split(":") for pair in args.substitutions.split(","))  # one ':' each
for key in values:  # the release's fill_template.py asserts the same
    if key not in text:
        sys.exit(f"AssertionError: key '{key}' does not exist in the file {args.file_path}.")
with open(args.file_path, "w") as f:
    f.write(Template(text).safe_substitute(values))
"""

TENSORRT_LLM = """\
name: "tensorrt_llm"
backend: "${triton_backend}"
max_batch_size: ${triton_max_batch_size}
model_transaction_policy { decoupled: ${decoupled_mode} }
dynamic_batching {
  preferred_batch_size: [ ${triton_max_batch_size} ]
  max_queue_delay_microseconds: ${max_queue_delay_microseconds}
  default_queue_policy: { max_queue_size: ${max_queue_size} }
}
input [
  { name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "encoder_input_features"
    data_type: ${encoder_input_features_data_type} dims: [ -1, -1 ] optional: true },
  { name: "guided_decoding_guide_type" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "guided_decoding_guide" data_type: TYPE_STRING dims: [ 1 ] optional: true }
]
output [ { name: "generation_logits" data_type: ${logits_datatype} dims: [ -1, -1, -1 ] } ]
parameters: { key: "max_beam_width" value: { string_value: "${max_beam_width}" } }
parameters: { key: "gpt_model_type" value: { string_value: "${batching_strategy}" } }
parameters: { key: "gpt_model_path" value: { string_value: "${engine_dir}" } }
parameters: { key: "exclude_input_in_output"
  value: { string_value: "${exclude_input_in_output}" } }
parameters: { key: "max_tokens_in_paged_kv_cache"
  value: { string_value: "${max_tokens_in_paged_kv_cache}" } }
parameters: { key: "kv_cache_free_gpu_mem_fraction"
  value: { string_value: "${kv_cache_free_gpu_mem_fraction}" } }
parameters: { key: "enable_kv_cache_reuse" value: { string_value: "${enable_kv_cache_reuse}" } }
parameters: { key: "enable_chunked_context"
  value: { string_value: "${enable_chunked_context}" } }
parameters: { key: "tokenizer_dir" value: { string_value: "${tokenizer_dir}" } }
parameters: { key: "guided_decoding_backend"
  value: { string_value: "${guided_decoding_backend}" } }
parameters: { key: "xgrammar_tokenizer_info_path"
  value: { string_value: "${xgrammar_tokenizer_info_path}" } }
"""

PREPROCESSING = """\
name: "preprocessing"
backend: "python"
max_batch_size: ${triton_max_batch_size}
dynamic_batching {
  preferred_batch_size: [ ${triton_max_batch_size} ]
  max_queue_delay_microseconds: ${max_queue_delay_microseconds}
  default_queue_policy: { max_queue_size: ${max_queue_size} }
}
input [ { name: "QUERY" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "INPUT_ID" data_type: TYPE_INT32 dims: [ -1 ] } ]
parameters { key: "tokenizer_dir" value: { string_value: "${tokenizer_dir}" } }
parameters { key: "add_special_tokens" value: { string_value: "${add_special_tokens}" } }
parameters { key: "gpt_model_path" value: { string_value: "${engine_dir}" } }
parameters { key: "multimodal_model_path" value: { string_value: "${multimodal_model_path}" } }
instance_group [ { count: ${preprocessing_instance_count} kind: KIND_CPU } ]
"""

POSTPROCESSING = """\
name: "postprocessing"
backend: "python"
max_batch_size: ${triton_max_batch_size}
input [ { name: "TOKENS_BATCH" data_type: TYPE_INT32 dims: [ -1, -1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_STRING dims: [ -1 ] } ]
parameters { key: "tokenizer_dir" value: { string_value: "${tokenizer_dir}" } }
parameters { key: "skip_special_tokens" value: { string_value: "${skip_special_tokens}" } }
instance_group [ { count: ${postprocessing_instance_count} kind: KIND_CPU } ]
"""


def ensemble_template() -> str:
    """The scripted ensemble's interface in the shape of the release's ensemble template."""
    text = REFERENCE.read_text()
    text = text.replace('backend: "python"', 'platform: "ensemble"')
    text = text.replace("max_batch_size: 64", "max_batch_size: ${triton_max_batch_size}")
    head, name, tail = text.partition('name: "context_logits"')
    text = head + name + tail.replace("TYPE_FP32", "${logits_datatype}", 1)
    steps = "".join(
        f'    {{ model_name: "{m}" model_version: -1 }},\n'
        for m in ("preprocessing", "tensorrt_llm", "postprocessing")
    )
    return text + "ensemble_scheduling {\n  step [\n" + steps.rstrip(",\n") + "\n  ]\n}\n"


@pytest.fixture
def image(tmp_path: Path) -> dict[str, str]:
    """Fake release files; returns the environment that points the scripts at them."""
    templates = tmp_path / "all_models"
    for model, text in (
        ("ensemble", ensemble_template()),
        ("tensorrt_llm", TENSORRT_LLM),
        ("preprocessing", PREPROCESSING),
        ("postprocessing", POSTPROCESSING),
    ):
        (templates / model / "1").mkdir(parents=True)
        (templates / model / "config.pbtxt").write_text(text)
    fill = tmp_path / "fill_template.py"
    fill.write_text(FILL_TEMPLATE)
    return {
        **os.environ,
        "TRITON_MODEL_TEMPLATES": str(templates),
        "FILL_TEMPLATE": str(fill),
        "INTERFACE_REFERENCE": str(REFERENCE),
        "ENGINE_DIR": str(tmp_path / "engines" / "engine"),
        "TOKENIZER_DIR": str(tmp_path / "hf"),
    }


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(TRTLLM / script), *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


# --- the interface check ------------------------------------------------------------------------


def test_every_input_the_client_sends_is_in_the_reference_interface() -> None:
    params = GenerationParams(
        max_tokens=8, temperature=0.5, top_p=0.9, top_k=4, random_seed=7, stop_words=["\n"]
    )
    inputs = check.tensors(REFERENCE.read_text(), "input")
    guide = ("json_schema", '{"type": "object"}')
    for tensor in build_inputs("hello", params, stream=True, guide=guide):
        name, datatype = tensor.name(), tensor.datatype()
        assert name in inputs, f"the client sends {name}, which the ensemble lacks"
        assert inputs[name][0] == TRITON_TYPES[datatype], name
        assert len(inputs[name][1]) == len(tensor.shape()) - 1, name  # plus the batch dim
    assert "text_output" in check.tensors(REFERENCE.read_text(), "output")


def test_the_scripted_ensembles_share_one_interface() -> None:
    stream = REFERENCE.parent.parent / "ensemble_stream" / "config.pbtxt"
    assert check.interface_differences(REFERENCE.read_text(), stream.read_text()) == []


def _changed(reference: str, tensor: str, old: str, new: str) -> str:
    """``reference`` with ``old`` replaced by ``new`` inside the entry of ``tensor`` only."""
    at = reference.index(f'name: "{tensor}"')
    end = reference.index("}", at)
    assert old in reference[at:end]
    return reference[:at] + reference[at:end].replace(old, new, 1) + reference[end:]


@pytest.mark.parametrize(
    ("tensor", "old", "new", "expected"),
    [
        ("seed", '"seed"', '"random_seed"', "input 'seed' is missing"),
        ("max_tokens", "TYPE_INT32", "TYPE_INT64", "input 'max_tokens' is ('TYPE_INT64'"),
        ("text_output", "[ -1 ]", "[ -1, -1 ]", "output 'text_output' is ('TYPE_STRING', (-1, -1)"),
        ("stream", "optional: true", "", "input 'stream' is ('TYPE_BOOL', (1,), False)"),
    ],
    ids=["renamed-input", "other-type", "other-dims", "required"],
)
def test_the_interface_check_reports_each_difference(tensor, old, new, expected) -> None:
    reference = REFERENCE.read_text()
    problems = check.interface_differences(reference, _changed(reference, tensor, old, new))
    assert any(expected in p for p in problems), problems


def test_only_placeholders_in_string_values_may_stay_unfilled() -> None:
    text = 'max_batch_size: ${b}\nparameters: { value: { string_value: "${unset}" } }\ncount: ${c}'
    assert check.misplaced_placeholders(text) == [
        "line 1: ${b} is not filled",
        "line 3: ${c} is not filled",
    ]


# --- fill_repository.sh -------------------------------------------------------------------------


def test_fill_repository_without_the_embedding_model(tmp_path, image) -> None:
    out = tmp_path / "repo"
    result = run("fill_repository.sh", str(out), env={**image, "EMBEDDING_MODELS": ""})
    assert result.returncode == 0, result.stderr
    assert not (out / "minilm").exists()
    elsewhere = {**image, "EMBEDDING_MODELS": "/nonexistent"}
    missing = run("fill_repository.sh", str(tmp_path / "r2"), env=elsewhere)
    assert missing.returncode == 1 and "no embedding model minilm" in missing.stderr


def test_fill_repository_serves_the_unary_and_the_streaming_ensemble(tmp_path, image) -> None:
    out = tmp_path / "repo"
    result = run("fill_repository.sh", str(out), env=image)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ensemble", "ensemble_stream", "minilm", "minilm_tokenizer", "postprocessing",
        "preprocessing", "tensorrt_llm", "tensorrt_llm_stream",
    ]  # fmt: skip
    assert (out / "minilm" / "1" / "model.py").is_file()
    unary, streaming = (out / m / "config.pbtxt" for m in ("tensorrt_llm", "tensorrt_llm_stream"))
    assert 'name: "tensorrt_llm"' in unary.read_text()
    assert "decoupled: false" in unary.read_text()
    assert 'name: "tensorrt_llm_stream"' in streaming.read_text()
    assert "decoupled: true" in streaming.read_text()
    stream_ensemble = (out / "ensemble_stream" / "config.pbtxt").read_text()
    assert 'name: "ensemble_stream"' in stream_ensemble
    assert 'model_name: "tensorrt_llm_stream"' in stream_ensemble
    assert 'model_name: "tensorrt_llm"' in (out / "ensemble" / "config.pbtxt").read_text()
    # Filled from the environment; two models share the GPU, so each takes a smaller KV share.
    assert f'string_value: "{image["ENGINE_DIR"]}"' in unary.read_text()
    assert 'string_value: "0.45"' in unary.read_text()
    assert "max_batch_size: 64" in unary.read_text()
    preprocessing = (out / "preprocessing" / "config.pbtxt").read_text()
    assert f'string_value: "{image["TOKENIZER_DIR"]}"' in preprocessing
    assert "count: 4" in preprocessing
    assert check.check_repository(REFERENCE, out) == []


def test_fill_repository_can_serve_one_model_only(tmp_path, image) -> None:
    out = tmp_path / "repo"
    result = run("fill_repository.sh", str(out), env={**image, "SERVE_MODELS": "unary"})
    assert result.returncode == 0, result.stderr
    assert not (out / "ensemble_stream").exists() and (out / "ensemble").is_dir()
    assert 'string_value: "0.9"' in (out / "tensorrt_llm" / "config.pbtxt").read_text()
    bad = run("fill_repository.sh", str(out), env={**image, "SERVE_MODELS": "all"})
    assert bad.returncode == 2 and "SERVE_MODELS" in bad.stderr


def _parameter(config: str, key: str) -> str:
    """The string_value of parameter ``key`` in a filled config."""
    at = config.index(f'key: "{key}"')
    start = config.index('string_value: "', at) + len('string_value: "')
    return config[start : config.index('"', start)]


def test_fill_repository_turns_on_guided_decoding_with_the_engines_tokenizer_info(
    tmp_path, image
) -> None:
    out = tmp_path / "repo"
    result = run("fill_repository.sh", str(out), env=image)
    assert result.returncode == 0, result.stderr
    info = f"{image['ENGINE_DIR']}/tokenizer/xgrammar_tokenizer_info.json"
    for model in ("tensorrt_llm", "tensorrt_llm_stream"):
        config = (out / model / "config.pbtxt").read_text()
        assert _parameter(config, "guided_decoding_backend") == "xgrammar", model
        assert _parameter(config, "xgrammar_tokenizer_info_path") == info, model
    # Workers render prompts with the model's chat template, BOS included where it wants one.
    preprocessing = (out / "preprocessing" / "config.pbtxt").read_text()
    assert _parameter(preprocessing, "add_special_tokens") == "false"
    # The ensembles still take the guide the workers send.
    inputs = check.tensors((out / "ensemble" / "config.pbtxt").read_text(), "input")
    assert {"guided_decoding_guide_type", "guided_decoding_guide"} <= inputs.keys()


def test_fill_repository_can_leave_guided_decoding_off(tmp_path, image) -> None:
    out = tmp_path / "repo"
    result = run("fill_repository.sh", str(out), env={**image, "GUIDED_DECODING": "false"})
    assert result.returncode == 0, result.stderr
    config = (out / "tensorrt_llm" / "config.pbtxt").read_text()
    # An unfilled placeholder is what the C++ backend reads as "no guided decoding".
    assert _parameter(config, "guided_decoding_backend") == "${guided_decoding_backend}"
    assert _parameter(config, "xgrammar_tokenizer_info_path") == "${xgrammar_tokenizer_info_path}"
    assert check.check_repository(REFERENCE, out) == []
    bad = run("fill_repository.sh", str(out), env={**image, "GUIDED_DECODING": "yes"})
    assert bad.returncode == 2 and "GUIDED_DECODING" in bad.stderr


def test_fill_repository_refuses_a_release_without_guided_decoding(tmp_path, image) -> None:
    # fill_template.py refuses a key its template lacks: an older tensorrt_llm template fails
    # the fill (and the image build) instead of loading engines that reject every guide.
    template = Path(image["TRITON_MODEL_TEMPLATES"]) / "tensorrt_llm" / "config.pbtxt"
    text = template.read_text()
    at = text.index('parameters: { key: "guided_decoding_backend"')
    template.write_text(text[:at])
    result = run("fill_repository.sh", str(tmp_path / "repo"), env=image)
    assert result.returncode != 0
    assert "key 'guided_decoding_backend' does not exist" in result.stderr


def test_fill_repository_refuses_a_release_that_speaks_another_interface(tmp_path, image) -> None:
    template = Path(image["TRITON_MODEL_TEMPLATES"]) / "ensemble" / "config.pbtxt"
    template.write_text(template.read_text().replace('name: "seed"', 'name: "random_seed"'))
    result = run("fill_repository.sh", str(tmp_path / "repo"), env=image)
    assert result.returncode == 1
    assert "input 'seed' is missing" in result.stderr
    assert "input 'random_seed' is not in the client's interface" in result.stderr


def test_fill_repository_refuses_a_template_with_a_placeholder_it_does_not_fill(
    tmp_path, image
) -> None:
    template = Path(image["TRITON_MODEL_TEMPLATES"]) / "tensorrt_llm" / "config.pbtxt"
    template.write_text(template.read_text().replace("TYPE_INT32", "${input_ids_datatype}", 1))
    result = run("fill_repository.sh", str(tmp_path / "repo"), env=image)
    assert result.returncode == 1
    assert "${input_ids_datatype} is not filled" in result.stderr


def test_fill_repository_says_when_it_does_not_run_in_the_triton_image(tmp_path, image) -> None:
    result = run(
        "fill_repository.sh", str(tmp_path / "repo"), env={**image, "FILL_TEMPLATE": "/nope.py"}
    )
    assert result.returncode == 1 and "not the pinned Triton TensorRT-LLM image?" in result.stderr


# --- build_engines.sh ---------------------------------------------------------------------------


@pytest.fixture
def builder(tmp_path: Path, image: dict[str, str]) -> dict[str, str]:
    """Fake converter and trtllm-build that log their arguments; a checkpoint to convert."""
    log = tmp_path / "calls.log"
    examples = tmp_path / "examples"
    (examples / "models" / "core" / "llama").mkdir(parents=True)
    (examples / "models" / "core" / "llama" / "convert_checkpoint.py").write_text(
        "import os, sys\n"
        f"open({str(log)!r}, 'a').write('convert ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        "out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "os.makedirs(out, exist_ok=True)\n"
        "open(os.path.join(out, 'config.json'), 'w').write('{}')\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    build = bin_dir / "trtllm-build"
    build.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "build $*" >> {log}\n'
        '[[ -z "${FAIL_BUILD:-}" ]] || exit 3\n'
        "while [[ $# -gt 0 ]]; do [[ $1 == --output_dir ]] && out=$2; shift; done\n"
        'mkdir -p "$out" && echo {} > "$out/config.json" && touch "$out/rank0.engine"\n'
    )
    build.chmod(0o755)
    # TensorRT-LLM's generate_xgrammar_tokenizer_info.py: the real one writes this file.
    (examples / "generate_xgrammar_tokenizer_info.py").write_text(
        "import os, sys\n"
        f"open({str(log)!r}, 'a').write('xgrammar ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        "out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "os.makedirs(out, exist_ok=True)\n"
        "open(os.path.join(out, 'xgrammar_tokenizer_info.json'), 'w').write("
        '\'{"encoded_vocab": [], "tokenizer_str": "", "stop_token_ids": [2]}\')\n'
    )
    # A chat model's checkpoint: the scripted model's tokenizer stands in for a real one.
    checkpoint = tmp_path / "hf"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(SCRIPTED_TOKENIZER / name, checkpoint / name)
    return {
        **image,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "TRTLLM_EXAMPLES_DIR": str(examples),
        "HF_MODEL_DIR": str(checkpoint),
        "CALLS_LOG": str(log),
    }


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["CALLS_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_build_engines_converts_then_builds_with_the_settings(builder) -> None:
    result = run("build_engines.sh", env={**builder, "TP_SIZE": "2", "MAX_INPUT_LEN": "2048"})
    assert result.returncode == 0, result.stderr
    convert, build, _ = calls(builder)
    assert "--dtype bfloat16 --tp_size 2 --pp_size 1" in convert
    assert "--max_batch_size 64" in build and "--max_input_len 2048" in build
    assert "--max_seq_len 3072" in build and "--workers 2" in build
    assert "--kv_cache_type paged" in build and "--use_paged_context_fmha enable" in build
    engine = Path(builder["ENGINE_DIR"])
    assert (engine / "rank0.engine").is_file() and (engine / "agentq-build.env").is_file()
    assert not Path(builder["ENGINE_DIR"] + ".partial").exists()


def test_build_engines_keeps_engines_built_with_the_same_settings(builder) -> None:
    assert run("build_engines.sh", env=builder).returncode == 0
    again = run("build_engines.sh", env=builder)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert len(calls(builder)) == 3  # one conversion, one build, one tokenizer info
    changed = run("build_engines.sh", env={**builder, "MAX_BATCH_SIZE": "32"})
    assert changed.returncode == 0
    build, xgrammar = calls(builder)[-2:]
    assert "--max_batch_size 32" in build
    # New engines, so the tokenizer folder beside them is written again.
    assert xgrammar.startswith("xgrammar ")
    assert (Path(builder["ENGINE_DIR"]) / "tokenizer" / "xgrammar_tokenizer_info.json").is_file()


def test_a_failed_build_leaves_the_previous_engines_in_place(builder) -> None:
    assert run("build_engines.sh", env=builder).returncode == 0
    failed = run("build_engines.sh", env={**builder, "MAX_BATCH_SIZE": "8", "FAIL_BUILD": "1"})
    assert failed.returncode != 0
    engine = Path(builder["ENGINE_DIR"])
    assert (engine / "rank0.engine").is_file()
    assert "MAX_BATCH_SIZE=64" in (engine / "agentq-build.env").read_text()


def test_build_engines_says_where_the_checkpoint_is_missing(tmp_path, builder) -> None:
    result = run("build_engines.sh", env={**builder, "HF_MODEL_DIR": str(tmp_path / "none")})
    assert result.returncode == 1
    assert "no Hugging Face checkpoint" in result.stderr and "HF_MODEL_ID" in result.stderr
    unknown = run("build_engines.sh", env={**builder, "MODEL_FAMILY": "nosuchmodel"})
    assert unknown.returncode == 1 and "no convert_checkpoint.py" in unknown.stderr


def test_build_engines_writes_the_tokenizer_folder_beside_the_engines(builder) -> None:
    result = run("build_engines.sh", env=builder)
    assert result.returncode == 0, result.stderr
    folder = Path(builder["ENGINE_DIR"]) / "tokenizer"
    xgrammar = calls(builder)[-1]
    assert xgrammar == (
        f"xgrammar --model_dir {builder['HF_MODEL_DIR']} --output_dir {folder}.partial"
    )
    assert (folder / "xgrammar_tokenizer_info.json").is_file()
    assert not Path(f"{folder}.partial").exists()
    # What the workers read: the model's own chat template and tokenizer, as they load them.
    request = ChatRequest((Message("user", "hello"),), GenerationParams(max_tokens=8))
    rendered = load_template(str(folder)).render(request)
    assert rendered == load_template(str(SCRIPTED_TOKENIZER)).render(request)
    assert load_tokenizer(folder).encode("hello").ids == (
        load_tokenizer(SCRIPTED_TOKENIZER).encode("hello").ids
    )


def test_build_engines_adds_the_tokenizer_to_engines_built_before_it(builder) -> None:
    assert run("build_engines.sh", env=builder).returncode == 0
    folder = Path(builder["ENGINE_DIR"]) / "tokenizer"
    shutil.rmtree(folder)  # engines from an earlier agentq: no tokenizer folder
    again = run("build_engines.sh", env=builder)
    assert again.returncode == 0, again.stderr
    assert "engines in" in again.stdout and "nothing to do" in again.stdout
    assert [c.split()[0] for c in calls(builder)] == ["convert", "build", "xgrammar", "xgrammar"]
    assert (folder / "xgrammar_tokenizer_info.json").is_file()
    kept = run("build_engines.sh", env=builder)
    assert kept.returncode == 0 and len(calls(builder)) == 4  # both up to date


def test_build_engines_without_guided_decoding_still_exports_the_tokenizer(builder) -> None:
    off = {**builder, "GUIDED_DECODING": "false"}
    assert run("build_engines.sh", env=off).returncode == 0
    folder = Path(builder["ENGINE_DIR"]) / "tokenizer"
    assert not (folder / "xgrammar_tokenizer_info.json").exists()
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    on = run("build_engines.sh", env=builder)  # turned on: the info only, engines kept
    assert on.returncode == 0
    assert [c.split()[0] for c in calls(builder)] == ["convert", "build", "xgrammar"]
    bad = run("build_engines.sh", env={**builder, "GUIDED_DECODING": "1"})
    assert bad.returncode == 2 and "GUIDED_DECODING" in bad.stderr


def test_build_engines_copies_the_tokenizer_for_the_workers_on_every_run(tmp_path, builder):
    export = tmp_path / "served-tokenizer"
    export.mkdir()
    (export / "stale.json").write_text("{}")  # another model's, or the CPU profile's
    env = {**builder, "TOKENIZER_EXPORT_DIR": str(export)}
    assert run("build_engines.sh", env=env).returncode == 0
    names = sorted(p.name for p in export.iterdir())
    assert names == sorted(p.name for p in (Path(builder["ENGINE_DIR"]) / "tokenizer").iterdir())
    assert "stale.json" not in names and "tokenizer_config.json" in names
    (export / "tokenizer.json").unlink()
    assert run("build_engines.sh", env=env).returncode == 0  # nothing rebuilt, copied again
    assert (export / "tokenizer.json").is_file()


def test_build_engines_refuses_a_checkpoint_the_workers_could_not_use(builder) -> None:
    (Path(builder["HF_MODEL_DIR"]) / "tokenizer_config.json").write_text('{"eos_token": "x"}')
    result = run("build_engines.sh", env=builder)
    assert result.returncode == 1
    assert "no chat template" in result.stderr and "cannot export the tokenizer" in result.stderr
    assert not (Path(builder["ENGINE_DIR"]) / "tokenizer").exists()


def test_build_engines_needs_the_xgrammar_script_for_guided_decoding(builder) -> None:
    (Path(builder["TRTLLM_EXAMPLES_DIR"]) / "generate_xgrammar_tokenizer_info.py").unlink()
    result = run("build_engines.sh", env=builder)
    assert result.returncode == 1
    assert "generate_xgrammar_tokenizer_info.py" in result.stderr
    assert "GUIDED_DECODING=false" in result.stderr


# --- export_tokenizer.py ------------------------------------------------------------------------


def _load_export_tokenizer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "export_tokenizer", TRTLLM / "export_tokenizer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


exporter = _load_export_tokenizer()


def test_a_chat_template_in_its_own_file_is_folded_into_the_config(tmp_path) -> None:
    checkpoint, out = tmp_path / "hf", tmp_path / "out"
    checkpoint.mkdir()
    shutil.copyfile(SCRIPTED_TOKENIZER / "tokenizer.json", checkpoint / "tokenizer.json")
    config = json.loads((SCRIPTED_TOKENIZER / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(config))
    (checkpoint / "chat_template.jinja").write_text(template)
    written = exporter.export(checkpoint, out)
    assert written == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == template


def test_a_checkpoint_without_tokenizer_json_is_refused(tmp_path) -> None:
    checkpoint = tmp_path / "hf"
    checkpoint.mkdir()
    shutil.copyfile(
        SCRIPTED_TOKENIZER / "tokenizer_config.json", checkpoint / "tokenizer_config.json"
    )
    with pytest.raises(exporter.ExportError, match=r"no tokenizer\.json"):
        exporter.export(checkpoint, tmp_path / "out")


# --- serve.sh -----------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_engines(tmp_path, image) -> None:
    result = run("serve.sh", env={**image, "MODEL_REPOSITORY": str(tmp_path / "repo")})
    assert result.returncode == 1 and "run build_engines.sh first" in result.stderr


def _engines(image: dict[str, str], tokenizer_info: bool = True) -> Path:
    engine = Path(image["ENGINE_DIR"])
    (engine / "tokenizer").mkdir(parents=True)
    (engine / "config.json").write_text("{}")
    if tokenizer_info:
        (engine / "tokenizer" / "xgrammar_tokenizer_info.json").write_text("{}")
    return engine


def test_serve_refuses_engines_without_the_tokenizer_info_guided_decoding_needs(
    tmp_path, image
) -> None:
    _engines(image, tokenizer_info=False)
    env = {**image, "MODEL_REPOSITORY": str(tmp_path / "repo")}
    result = run("serve.sh", env=env)
    assert result.returncode == 1
    assert "xgrammar_tokenizer_info.json" in result.stderr and "build_engines.sh" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_serve_fills_the_repository_then_runs_triton_in_orchestrator_mode(tmp_path, image) -> None:
    _engines(image)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: H200'\necho 'GPU 1: H200'\n")
    (bin_dir / "mpirun").write_text('#!/bin/sh\necho "orchestrator=$TRTLLM_ORCHESTRATOR $*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    repo = tmp_path / "repo"
    env = {
        **image,
        "MODEL_REPOSITORY": str(repo),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    result = run("serve.sh", env=env)
    assert result.returncode == 0, result.stderr
    launched = result.stdout.strip().splitlines()[-1]
    assert launched.startswith("orchestrator=1 --allow-run-as-root -n 1 tritonserver ")
    for arg in (f"--model-repository={repo}", "--http-port=8000", "--grpc-port=8001",
                "--metrics-port=8002", "--cuda-memory-pool-byte-size=0:0",
                "--cuda-memory-pool-byte-size=1:0", "--model-load-thread-count=1"):  # fmt: skip
        assert arg in launched.split(), arg
    assert (repo / "ensemble_stream" / "config.pbtxt").is_file()


def test_the_image_holds_every_script_the_scripts_call() -> None:
    # Each script calls its siblings as "$here/<name>": all of them must be in the image.
    dockerfile = (REPO_ROOT / "triton.Dockerfile").read_text().replace("\\\n", " ")
    copy = next(
        line for line in dockerfile.splitlines() if line.endswith("/opt/agentq/trtllm/")
    ).split()
    copied = {Path(word).name for word in copy if word.startswith("models/trtllm/")}
    called = {
        name
        for script in TRTLLM.glob("*.sh")
        for name in re.findall(r'"\$here/([\w.]+)"', script.read_text())
    }
    assert called >= {"export_tokenizer.py", "check_interface.py", "fill_repository.sh"}
    assert called <= copied, called - copied
