"""PersonaVector files: bit-exact round trips, validation, and clean failures."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from personavec.core.projection import project, project_layers, token_projections
from personavec.core.vector import (
    PersonaVector,
    VectorMetadata,
    config_fingerprint,
    projection_percentiles,
)
from personavec.errors import VectorFileError
from tiny_models import tiny_model


def vector_for(lm, *, seed: int = 0) -> PersonaVector:
    n = lm.model.config.num_hidden_layers
    generator = torch.Generator().manual_seed(seed)
    meta = VectorMetadata(
        trait="evil",
        model_id=lm.model_id,
        model_fingerprint=config_fingerprint(lm.model.config),
        hidden_size=lm.hidden_size,
        n_layers=n,
        readouts=["response_avg", "prompt_last"],
        sample_counts={"pos": 7, "neg": 5},
        judge="contrast:tiny",
        thresholds={"pos": 50.0, "neg": 50.0, "coherence": 50.0},
        recommended_layer=2,
        recommended_coef=1.5,
    )
    return PersonaVector(
        {
            "response_avg": torch.randn(n + 1, lm.hidden_size, generator=generator),
            "prompt_last": torch.randn(n + 1, lm.hidden_size, generator=generator),
        },
        meta,
        typical_norm=torch.rand(n + 1, generator=generator) + 1,
    )


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    original = vector_for(lm)
    path = original.save(tmp_path / "evil")
    assert path.name == "evil.safetensors"
    loaded = PersonaVector.load(path, model=lm.model)
    for name, tensor in original.vectors.items():
        assert torch.equal(loaded.vectors[name], tensor)
    assert original.typical_norm is not None and loaded.typical_norm is not None
    assert torch.equal(loaded.typical_norm, original.typical_norm)
    assert loaded.meta == original.meta.model_copy(update={"readouts": sorted(original.vectors)})
    assert path.read_bytes() == loaded.to_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_mismatched_model_is_rejected_unless_forced(tmp_path: Path) -> None:
    path = vector_for(tiny_model("llama")).save(tmp_path / "v.safetensors")
    other = tiny_model("qwen2")  # same sizes, different architecture
    with pytest.raises(VectorFileError, match="--force"):
        PersonaVector.load(path, model=other.model)
    PersonaVector.load(path, model=other.model, force=True)
    wider = tiny_model("llama")
    wider.model.get_input_embeddings().weight.data = torch.zeros(10, 32)
    with pytest.raises(VectorFileError, match="hidden size"):
        PersonaVector.load(path, model=wider.model, force=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a safetensors"),
        (b"\x00" * 3, "not a safetensors"),
        (pickle.dumps({"a": 1}), "not a safetensors"),
        (b"\xff" * 64, "not a safetensors"),
    ],
)
def test_unreadable_files_fail_cleanly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(VectorFileError, match=message):
        PersonaVector.load(path)


def test_pickled_torch_file_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"vector": torch.zeros(3)}, path)
    with pytest.raises(VectorFileError, match="not a safetensors"):
        PersonaVector.load(path)


def test_missing_metadata_nan_and_truncation(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(VectorFileError, match="no personavec metadata"):
        PersonaVector.load(plain)
    with pytest.raises(VectorFileError, match="not found"):
        PersonaVector.load(tmp_path / "missing.safetensors")

    lm = tiny_model("llama")
    good = vector_for(lm)
    data = good.to_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VectorFileError):
        PersonaVector.load(truncated)

    bad = good.vectors["response_avg"].clone()
    bad[1, 3] = float("nan")
    with pytest.raises(VectorFileError, match="NaN"):
        PersonaVector({"response_avg": bad}, good.meta.model_copy(update={"readouts": []}))


def test_wrong_shape_rejected() -> None:
    lm = tiny_model("llama")
    good = vector_for(lm)
    with pytest.raises(VectorFileError, match="shape"):
        PersonaVector({"response_avg": torch.zeros(2, lm.hidden_size)}, good.meta)


def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = tiny_model("llama")
    path = vector_for(lm, seed=0).save(tmp_path / "v.safetensors")
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("personavec.store.os.replace", broken_replace)
    with pytest.raises(OSError):
        vector_for(lm, seed=1).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_projection_arithmetic() -> None:
    v = torch.tensor([3.0, 4.0])
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(project(h, v), torch.tensor([0.6, 1.6, 5.0]))
    readouts = torch.randn(5, 3, 2)
    vectors = torch.randn(3, 2)
    expected = torch.stack([project(readouts[:, i], vectors[i]) for i in range(3)], dim=1)
    torch.testing.assert_close(project_layers(readouts, vectors), expected)


def test_token_projections_match_capture() -> None:
    from personavec.core.capture import Example, capture_tokens
    from personavec.core.models import chat_messages

    lm = tiny_model("llama")
    tokens = capture_tokens(lm, Example(chat_messages("Hi"), "Hello there"), layers=[1, 2])
    v = torch.randn(lm.hidden_size)
    values = token_projections(tokens, 2, v)
    assert values.shape == (len(tokens.token_ids),)
    torch.testing.assert_close(values, tokens.hidden[1] @ (v / v.norm()))
    with pytest.raises(Exception, match="not captured"):
        token_projections(tokens, 3, v)


def test_projection_percentiles_equal_hand_computation() -> None:
    generator = torch.Generator().manual_seed(3)
    readouts = torch.randn(7, 4, 5, generator=generator)
    vectors = torch.randn(4, 5, generator=generator)
    vectors[2] = 0.0  # a zero row projects to 0
    table = projection_percentiles(readouts, vectors)
    assert table.shape == (4, 101) and table.dtype == torch.float32
    for layer in (0, 1, 3):
        unit = vectors[layer] / vectors[layer].norm()
        values = sorted((readouts[:, layer] @ unit).tolist())  # 7 values: 6 gaps of 100/6 %
        assert table[layer, 0].item() == pytest.approx(values[0], abs=1e-6)
        assert table[layer, 100].item() == pytest.approx(values[-1], abs=1e-6)
        # Percentile 50 is the 4th of 7 sorted values; 25 lies halfway between the 2nd and 3rd.
        assert table[layer, 50].item() == pytest.approx(values[3], abs=1e-6)
        assert table[layer, 25].item() == pytest.approx((values[1] + values[2]) / 2, abs=1e-6)
        assert bool((table[layer, 1:] >= table[layer, :-1]).all())
    assert torch.equal(table[2], torch.zeros(101))


def test_projection_percentiles_round_trip_and_lookup(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    base = vector_for(lm)
    rows = base.meta.n_layers + 1
    table = torch.linspace(-50.0, 50.0, 101).repeat(rows, 1) + torch.arange(rows).unsqueeze(1)
    with_table = PersonaVector(base.vectors, base.meta, base.typical_norm, table)
    path = with_table.save(tmp_path / "v.safetensors")
    loaded = PersonaVector.load(path, model=lm.model)
    assert loaded.projection_percentiles is not None
    assert torch.equal(loaded.projection_percentiles, table)
    assert path.read_bytes() == loaded.to_bytes()
    assert loaded.projection_percentile(2, 90) == 42.0  # -50 + 90 + layer 2
    assert loaded.projection_percentile(0, 12.5) == pytest.approx(-37.5)
    assert loaded.projection_percentile(3, 100) == 53.0
    with pytest.raises(VectorFileError, match=r"0\.\.100"):
        loaded.projection_percentile(1, 101)
    with pytest.raises(Exception, match="out of range"):
        loaded.projection_percentile(9, 50)
    with pytest.raises(VectorFileError, match="shape"):
        PersonaVector(base.vectors, base.meta, base.typical_norm, table[:, :100])


def test_old_file_without_percentiles_loads_and_says_what_to_do(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    old = vector_for(lm)  # written without percentiles, as by earlier versions
    path = old.save(tmp_path / "old.safetensors")
    loaded = PersonaVector.load(path)
    assert loaded.projection_percentiles is None
    assert torch.equal(loaded.vectors["response_avg"], old.vectors["response_avg"])
    with pytest.raises(VectorFileError) as info:
        loaded.projection_percentile(2, 95)
    message = str(info.value)
    assert "re-extract with this version or pass a raw threshold" in message
    assert "\n" not in message
