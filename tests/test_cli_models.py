"""Model loading and the core CLI commands (info, generate, export-gguf) on the real SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from personavec.cli import app
from personavec.core.models import (
    chat_messages,
    format_chat,
    load_model,
    smollm2_checkpoint,
    smollm2_gguf_path,
)
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.errors import ModelLoadError
from personavec.interop.gguf_export import read_control_vector

runner = CliRunner()


def synthetic_vector(lm, path: Path, *, layer: int = 15, seed: int = 0) -> Path:
    """A random persona vector that fits ``lm`` (for CLI plumbing, not for science)."""
    n = lm.n_layers
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n + 1, lm.hidden_size, generator=generator)
    meta = VectorMetadata(
        trait="synthetic",
        model_id=lm.model_id,
        model_fingerprint=config_fingerprint(lm.model.config),
        hidden_size=lm.hidden_size,
        n_layers=n,
        readouts=["response_avg"],
        recommended_layer=layer,
        recommended_coef=8.0,
    )
    return PersonaVector({"response_avg": vectors}, meta, torch.full((n + 1,), 100.0)).save(path)


def test_smollm2_checkpoint_is_plain_and_cached(smollm2) -> None:
    path = smollm2_checkpoint()
    assert path == smollm2_checkpoint()  # converted once, reused
    config = json.loads((path / "config.json").read_text())
    assert config.get("quantization_config") is None
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert smollm2.n_layers == 30 and smollm2.hidden_size == 576
    assert smollm2.tokenizer.padding_side == "left"
    assert getattr(smollm2.model, "hf_quantizer", None) is None
    assert next(smollm2.model.parameters()).dtype == torch.float32


def test_template_injects_default_system_prompt(smollm2) -> None:
    text = format_chat(smollm2.tokenizer, chat_messages("Hi"))
    assert "You are a helpful AI assistant named SmolLM" in text
    assert text.endswith("<|im_start|>assistant\n")
    custom = format_chat(smollm2.tokenizer, chat_messages("Hi", system="Be evil."))
    assert "Be evil." in custom and "named SmolLM" not in custom
    with pytest.raises(ValueError, match="role"):
        format_chat(smollm2.tokenizer, [{"content": "no role"}])


def test_gguf_file_and_directory_specs_load_the_same_model(smollm2) -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    from_gguf = load_model(str(smollm2_gguf_path()), device="cpu")
    from_dir = load_model(str(smollm2_checkpoint()), device="cpu")
    with torch.no_grad():
        reference = smollm2.model(ids).logits
        assert torch.equal(from_gguf.model(ids).logits, reference)
        assert torch.equal(from_dir.model(ids).logits, reference)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.gguf", "GGUF file not found"),
        ("not-a-model", "unknown model"),
        ("/definitely/not/here", "unknown model"),
    ],
)
def test_bad_model_specs_fail_clearly(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


def test_directory_without_config_fails(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(str(tmp_path))


def test_cli_info_prints_layers_and_norms() -> None:
    result = runner.invoke(app, ["info", "smollm2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "30 (layers 0..30)" in result.output
    assert "576" in result.output
    assert "<|im_start|>assistant" in result.output


@pytest.mark.slow
def test_cli_generate_steers_and_validates(smollm2, tmp_path: Path) -> None:
    vector = synthetic_vector(smollm2, tmp_path / "v.safetensors")
    base = ["generate", "Name a colour.", "--max-new-tokens", "8", "--device", "cpu"]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    steered = runner.invoke(app, [*base, "--vector", str(vector), "--compare"])
    assert steered.exit_code == 0, steered.output
    assert "layer 15" in steered.output and "coef 8" in steered.output
    unsteered_line = next(ln for ln in steered.output.splitlines() if ln.startswith("unsteered:"))
    steered_line = next(ln for ln in steered.output.splitlines() if ln.startswith("steered:"))
    assert unsteered_line.removeprefix("unsteered:").strip() in plain.output
    assert unsteered_line.split(":", 1)[1].strip() != steered_line.split(":", 1)[1].strip()

    for extra, message in [
        (["--layer", "31"], "out of range"),
        (["--coef", "nan"], "finite"),
        (["--positions", "middle"], "positions"),
        (["--layer", "x"], "cannot read layers"),
    ]:
        result = runner.invoke(app, [*base, "--vector", str(vector), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output
        assert len(result.output.strip().splitlines()) == 1
    other = tmp_path / "other.safetensors"
    PersonaVector.load(vector).meta  # noqa: B018 - the file is valid
    data = PersonaVector.load(vector)
    data.meta = data.meta.model_copy(update={"model_fingerprint": "0000", "model_id": "other"})
    data.save(other)
    result = runner.invoke(app, [*base, "--vector", str(other)])
    assert result.exit_code == 2 and "--force" in result.output
    assert runner.invoke(app, [*base, "--vector", str(other), "--force"]).exit_code == 0
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    result = runner.invoke(app, [*base, "--vector", str(garbage)])
    assert result.exit_code == 2 and "not a safetensors" in result.output
    result = runner.invoke(app, ["generate", "hi", "--model", "missing.gguf"])
    assert result.exit_code == 2 and "GGUF file not found" in result.output


def test_cli_export_gguf(smollm2, tmp_path: Path) -> None:
    vector = synthetic_vector(smollm2, tmp_path / "v.safetensors", layer=12)
    out = tmp_path / "cv.gguf"
    result = runner.invoke(app, ["export-gguf", str(vector), str(out), "--coef", "2"])
    assert result.exit_code == 0, result.output
    layers = read_control_vector(out)
    assert list(layers) == [12]
    expected = 2 * PersonaVector.load(vector).at(12)
    assert torch.allclose(torch.from_numpy(layers[12]), expected)
    bad = runner.invoke(app, ["export-gguf", str(vector), str(tmp_path / "x.gguf"), "--layer", "1"])
    assert bad.exit_code == 2 and "layers 2..30" in bad.output
    assert not (tmp_path / "x.gguf").exists()


def test_calibrated_relative_coefficient_is_honoured(smollm2, tmp_path: Path) -> None:
    from personavec.core.setting import SteeringSetting

    path = synthetic_vector(smollm2, tmp_path / "v.safetensors", layer=12)
    pv = PersonaVector.load(path)
    pv.meta = pv.meta.model_copy(
        update={
            "recommended_coef": 0.2,
            "calibration": {"relative": True, "positions": "response"},
        }
    )
    request = SteeringSetting.from_vector(pv)
    request.check_compatible(smollm2.model)
    assert request.unit == "relative" and request.layers == (12,) and request.coef == 0.2
    assert request.positions == "response"  # calibrated there, so applied there by default
    (item,) = request.interventions()
    assert float((item.vector * item.coef).norm()) == pytest.approx(0.2 * 100.0, rel=1e-5)
    raw = SteeringSetting.from_vector(pv, coef=3.0)
    assert raw.unit == "raw"  # an explicit coefficient is raw unless --relative is given
    assert raw.positions == "all"


@pytest.mark.parametrize("module", ["personavec", "personavec.cli"])
def test_cli_runs_as_a_module(module: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("personavec ")


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"model_type": "llama", ', "not valid JSON (Expecting property name"),
        ("[1, 2]", "it holds a JSON list, not an object"),
        (b"\xff\xfe{}", "'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_corrupt_checkpoint_config_is_named_not_blamed_on_the_hub(
    tmp_path: Path, content: str | bytes, reason: str
) -> None:
    config = tmp_path / "config.json"
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content)
    expected = f"cannot read {config}: {reason}"
    with pytest.raises(ModelLoadError, match="repair or re-create the checkpoint") as info:
        load_model(str(tmp_path), device="cpu")
    assert str(info.value).startswith(expected)
    result = runner.invoke(app, ["info", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "hub" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_checkpoint_that_transformers_cannot_load_is_not_blamed_on_the_hub(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # no tokenizer, no weights
    with pytest.raises(ModelLoadError, match="repair or re-create the checkpoint") as info:
        load_model(str(tmp_path), device="cpu")
    assert str(info.value).startswith(f"cannot load the checkpoint in {tmp_path}: ")
    assert "hub" not in str(info.value)


def test_a_model_without_chat_template_is_named_when_loaded(
    tiny_model_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base model's plain transcript format is used, and said, never silently."""
    from personavec.core.models import encode_prompt, load_model

    for with_template in (True, False):
        tiny = tiny_model_factory("llama", chat_template=with_template)
        directory = tmp_path / f"template-{with_template}"
        tiny.model.save_pretrained(directory)
        tiny.tokenizer.save_pretrained(directory)
        capsys.readouterr()
        loaded = load_model(str(directory), device="cpu")
        note = [line for line in capsys.readouterr().err.splitlines() if "chat template" in line]
        if with_template:
            assert note == []
        else:
            assert len(note) == 1 and "plain 'User: ...' / 'Assistant:' transcript" in note[0]
            ids = encode_prompt(loaded.tokenizer, [{"role": "user", "content": "Hi"}])
            prompt = str(loaded.tokenizer.decode(ids))
            assert prompt.endswith("User: Hi\nAssistant:")
