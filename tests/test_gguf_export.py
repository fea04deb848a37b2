"""llama.cpp control-vector export: file contents, refusals, atomic writes, and proof that
llama.cpp steers at the same layer as personavec.

The end-to-end tests load SmolLM2 twice — in transformers (fp32, dequantized from the bundled
GGUF) and in llama.cpp (the Q4_1 GGUF itself) — and compare the change in next-token logits
caused by a seeded random vector: HF steering at layer ``L`` vs llama.cpp with the exported file.
Each position's logit change is centred over the vocabulary (a constant shift does not change
the softmax) and all prompt positions are compared together.

Measured on SmolLM2-135M-Instruct, ``L = 15``, vector norm 80 (about half the layer's typical
residual norm), cosine(HF delta, llama.cpp delta): 0.721 at ``L − 1``, 0.996 at ``L``, 0.769 at
``L + 1`` (last position alone: 0.494 / 0.996 / 0.786); over five seeds and two norms the
value at ``L`` stayed ≥ 0.995 and the neighbours ≤ 0.88. Greedy next tokens agree between HF at
``L`` and llama.cpp at 33 of 36 positions (16 and 20 of 36 for HF at ``L ∓ 1``). Unsteered HF and
llama.cpp logits agree to centred cosine 0.9992.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

from personavec.cli import app
from personavec.core.models import LoadedModel, chat_messages, format_chat, smollm2_gguf_path
from personavec.core.setting import SteeringSetting
from personavec.core.steering import Intervention, steer
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.errors import SteeringError, VectorFileError
from personavec.interop.gguf_export import export_gguf, llama_cpp_tensor_name, read_control_vector
from personavec.interop.llama_cpp_steer import (
    apply_control_vector,
    clear_control_vector,
    load_control_vector_data,
)

N_LAYERS = 4
HIDDEN = 8


def make_vector(
    n_layers: int = N_LAYERS,
    hidden: int = HIDDEN,
    *,
    rows: torch.Tensor | None = None,
    typical_norm: torch.Tensor | None = None,
    fingerprint: str = "0" * 16,
    model_id: str = "test-model",
) -> PersonaVector:
    """A persona vector with seeded random rows (or the given ones)."""
    if rows is None:
        rng = np.random.default_rng(7)
        rows = torch.from_numpy(rng.standard_normal((n_layers + 1, hidden)).astype(np.float32))
    meta = VectorMetadata(
        trait="test",
        model_id=model_id,
        model_fingerprint=fingerprint,
        hidden_size=hidden,
        n_layers=n_layers,
        readouts=["response_avg"],
    )
    return PersonaVector({"response_avg": rows}, meta, typical_norm=typical_norm)


def setting(
    vector: PersonaVector, layers: list[int], coef: float = 1.0, unit: str = "raw"
) -> SteeringSetting:
    return SteeringSetting(vector, tuple(layers), coef, unit)  # type: ignore[arg-type]


def zero_control_vector(path: Path, hidden: int, layer: int) -> Path:
    """A control vector whose slot for ``layer`` is all zeros (personavec refuses to export one)."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "zero")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor(llama_cpp_tensor_name(layer, 30), np.zeros(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"missing GGUF key {key}"
    return field.contents()


# ---- the exporter, without a model ---------------------------------------------------------


def test_tensor_names_follow_llama_cpp_slots() -> None:
    # personavec layer L (output of block L) = llama.cpp slot L-1 (output of 0-indexed block L-1)
    assert [llama_cpp_tensor_name(layer, 30) for layer in (2, 15, 30)] == [
        "direction.1",
        "direction.14",
        "direction.29",
    ]
    for layer in (0, 1, 31):
        with pytest.raises(SteeringError, match=r"2\.\.30"):
            llama_cpp_tensor_name(layer, 30)


def test_round_trip(tmp_path: Path) -> None:
    vector = make_vector()
    path = export_gguf(setting(vector, [4, 2], 1.5, "raw"), tmp_path / "cv.gguf")
    assert path == tmp_path / "cv.gguf"
    back = read_control_vector(path)
    assert sorted(back) == [2, 4]
    for layer in (2, 4):
        assert back[layer].dtype == np.float32
        np.testing.assert_allclose(back[layer], 1.5 * vector.at(layer).numpy(), rtol=1e-6)

    reader = gguf.GGUFReader(str(path))
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    assert all(len(t.shape) == 1 and t.n_elements == HIDDEN for t in reader.tensors)
    assert field_value(reader, "general.architecture") == "controlvector"
    assert field_value(reader, "controlvector.model_hint") == "test-model"
    assert field_value(reader, "controlvector.layer_count") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]  # no temporary left behind


def test_model_hint_and_negative_coef(tmp_path: Path) -> None:
    vector = make_vector()
    path = export_gguf(setting(vector, [3], -2.0, "raw"), tmp_path / "cv.gguf", model_hint="smol")
    np.testing.assert_allclose(read_control_vector(path)[3], -2.0 * vector.at(3).numpy())
    assert field_value(gguf.GGUFReader(str(path)), "controlvector.model_hint") == "smol"


@pytest.mark.parametrize("layer", [0, 1, N_LAYERS + 1, -1])
def test_refuses_layers_without_a_slot(tmp_path: Path, layer: int) -> None:
    target = tmp_path / "out" / "cv.gguf"
    with pytest.raises(SteeringError) as info:
        export_gguf(setting(make_vector(), [layer], 1.0, "raw"), target)
    message = str(info.value)
    assert "\n" not in message
    assert str(layer) in message
    assert not target.exists()
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == []


def test_relative_coefficient(tmp_path: Path) -> None:
    typical = torch.linspace(10.0, 50.0, N_LAYERS + 1)
    vector = make_vector(typical_norm=typical)
    path = export_gguf(setting(vector, [2, 3], 0.25, "relative"), tmp_path / "cv.gguf")
    back = read_control_vector(path)
    for layer in (2, 3):
        expected = 0.25 * float(typical[layer]) * vector.direction(layer).numpy()
        np.testing.assert_allclose(back[layer], expected, rtol=1e-5)
        assert np.linalg.norm(back[layer]) == pytest.approx(0.25 * float(typical[layer]), 1e-5)


def test_relative_coefficient_needs_typical_norms(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match="typical norms"):
        export_gguf(setting(make_vector(), [2], 0.5, "relative"), tmp_path / "cv.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_the_calibrated_relative_strength(tmp_path: Path) -> None:
    """A vector calibrated by ``sweep --relative`` is exported at coef · typical_norm, as
    ``generate`` steers it, not as coef × the raw vector."""
    from typer.testing import CliRunner

    typical = torch.linspace(10.0, 50.0, N_LAYERS + 1)
    vector = make_vector(typical_norm=typical)
    vector.meta.recommended_layer = 3
    vector.meta.recommended_coef = 0.2
    vector.meta.calibration = {"relative": True, "positions": "response"}
    source = vector.save(tmp_path / "v.safetensors")
    target = tmp_path / "cv.gguf"
    outcome = CliRunner().invoke(app, ["export-gguf", str(source), str(target)])
    assert outcome.exit_code == 0, outcome.output
    back = read_control_vector(target)
    assert sorted(back) == [3]
    assert np.linalg.norm(back[3]) == pytest.approx(0.2 * float(typical[3]), rel=1e-5)
    assert np.linalg.norm(back[3]) != pytest.approx(0.2 * float(vector.at(3).norm()), rel=1e-2)
    # The same file steered with the library's defaults adds exactly what was exported.
    (item,) = SteeringSetting.from_vector(vector, positions="all").interventions()
    np.testing.assert_allclose(back[3], (item.coef * item.vector).numpy(), rtol=1e-6)
    # --raw without --coef converts the calibrated coefficient: the same vector is baked in.
    raw = CliRunner().invoke(app, ["export-gguf", str(source), str(target), "--raw"])
    assert raw.exit_code == 0, raw.output
    np.testing.assert_allclose(read_control_vector(target)[3], back[3], rtol=1e-6)
    # llama.cpp's own layer limit is a clear error.
    low = CliRunner().invoke(app, ["export-gguf", str(source), str(target), "--layer", "1"])
    assert low.exit_code == 2 and "llama.cpp" in low.output


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = export_gguf(setting(make_vector(), [2], 1.0, "raw"), tmp_path / "cv.gguf")
    before = target.read_bytes()
    # Layer 3 is valid, layer 1 is not: the failure comes after the writer has started.
    with pytest.raises(SteeringError):
        export_gguf(setting(make_vector(), [3, 1], 1.0, "raw"), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]


def test_refuses_other_suffix(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match=r"\.gguf"):
        export_gguf(setting(make_vector(), [2], 1.0, "raw"), tmp_path / "cv.bin")
    assert list(tmp_path.iterdir()) == []


# ---- the llama.cpp loader replica (no llama.cpp needed) ------------------------------------


def test_loader_buffer_layout(tmp_path: Path) -> None:
    vector = make_vector()
    path = export_gguf(setting(vector, [2, 4], 1.0, "raw"), tmp_path / "cv.gguf")
    n_embd, data = load_control_vector_data(path)
    assert n_embd == HIDDEN
    # slot s (= personavec layer s + 1) lives at data[n_embd*(s-1) : n_embd*s]; slot 0 is absent
    assert data.shape == (HIDDEN * 3,)
    np.testing.assert_allclose(data[0:HIDDEN], vector.at(2).numpy())
    np.testing.assert_array_equal(data[HIDDEN : 2 * HIDDEN], 0.0)
    np.testing.assert_allclose(data[2 * HIDDEN :], vector.at(4).numpy())

    other = export_gguf(setting(vector, [2], 1.0, "raw"), tmp_path / "other.gguf")
    _, summed = load_control_vector_data([(path, 2.0), (other, -1.0)])
    np.testing.assert_allclose(summed[0:HIDDEN], vector.at(2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(summed[2 * HIDDEN :], 2.0 * vector.at(4).numpy(), rtol=1e-6)


def test_loader_rejects_slot_zero(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_tensor("direction.0", np.ones(HIDDEN, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFileError, match="slot 0"):
        load_control_vector_data(path)


# ---- HF vs llama.cpp on SmolLM2 ------------------------------------------------------------

LAYER = 15
NORM = 80.0  # SmolLM2's residual norm at layer 15 is about 160 (beyond the first token)
SEED = 0
PROMPT = "What is your favourite animal?"


@pytest.fixture(scope="module")
def llama() -> Iterator[Any]:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"llama_cpp (llama-cpp-python) cannot be imported: {exc}")
    llm = llama_cpp.Llama(
        str(smollm2_gguf_path()),
        n_ctx=128,
        logits_all=True,
        n_threads=1,  # a tiny model; several spinning threads are slow on a busy machine
        n_threads_batch=1,
        verbose=False,
    )
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def prompt_ids(smollm2: LoadedModel) -> torch.Tensor:
    text = format_chat(smollm2.tokenizer, chat_messages(PROMPT))
    ids = smollm2.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert isinstance(ids, torch.Tensor)
    return ids


def llama_logits(llm: Any, ids: torch.Tensor) -> torch.Tensor:
    """llama.cpp's logits at every position of ``ids`` (fresh KV cache), ``[seq, vocab]``."""
    tokens = ids[0].tolist()
    llm.reset()
    llm.eval(tokens)
    return torch.from_numpy(np.array(llm.scores[: len(tokens)], dtype=np.float32))


def hf_logits(
    lm: LoadedModel, ids: torch.Tensor, interventions: list[Intervention] | None = None
) -> torch.Tensor:
    with torch.no_grad():
        if not interventions:
            return lm.model(ids).logits[0].float()
        with steer(lm.model, interventions):
            return lm.model(ids).logits[0].float()


def centred_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two logit changes, each position centred over the vocabulary."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def seeded_direction(hidden: int, seed: int = SEED) -> torch.Tensor:
    raw = np.random.default_rng(seed).standard_normal(hidden).astype(np.float32)
    return torch.from_numpy(raw / np.linalg.norm(raw))


def smollm2_vector(lm: LoadedModel, rows: dict[int, torch.Tensor]) -> PersonaVector:
    full = torch.zeros(lm.n_layers + 1, lm.hidden_size)
    for layer, row in rows.items():
        full[layer] = row
    return make_vector(
        lm.n_layers,
        lm.hidden_size,
        rows=full,
        fingerprint=config_fingerprint(lm.model.config),
        model_id=lm.model_id,
    )


@pytest.mark.slow
def test_llama_cpp_steers_the_same_layer_as_personavec(
    smollm2: LoadedModel, llama: Any, prompt_ids: torch.Tensor, tmp_path: Path
) -> None:
    lm, ids = smollm2, prompt_ids
    base_hf = hf_logits(lm, ids)
    base_cpp = llama_logits(llama, ids)
    # same weights; llama.cpp multiplies in Q4_1 x Q8 and transformers in fp32 (measured 0.9992)
    assert centred_cosine(base_hf, base_cpp) > 0.995

    v = NORM * seeded_direction(lm.hidden_size)
    path = export_gguf(
        setting(smollm2_vector(lm, {LAYER: v}), [LAYER], 1.0, "raw"), tmp_path / "cv.gguf"
    )
    apply_control_vector(llama, path)
    try:
        steered_cpp = llama_logits(llama, ids)
    finally:
        clear_control_vector(llama)
    delta_cpp = steered_cpp - base_cpp

    greedy_cpp = steered_cpp.argmax(dim=-1)
    steered_hf, cos, last, agree = {}, {}, {}, {}
    for layer in (LAYER - 1, LAYER, LAYER + 1):
        steered_hf[layer] = hf_logits(lm, ids, [Intervention(layer, v, 1.0, "add", "all")])
        delta_hf = steered_hf[layer] - base_hf
        cos[layer] = centred_cosine(delta_hf, delta_cpp)
        last[layer] = centred_cosine(delta_hf[-1], delta_cpp[-1])
        agree[layer] = float((steered_hf[layer].argmax(dim=-1) == greedy_cpp).float().mean())
    report = f"all positions {cos}, last position {last}, greedy agreement {agree}"

    # measured: all 0.721 / 0.996 / 0.769, last 0.494 / 0.996 / 0.786
    assert cos[LAYER] > 0.98, report
    assert last[LAYER] > 0.98, report
    for neighbour in (LAYER - 1, LAYER + 1):  # the off-by-one guard
        assert cos[neighbour] < 0.9, report
        assert cos[LAYER] - cos[neighbour] > 0.1, report
        assert last[LAYER] - last[neighbour] > 0.1, report
        assert agree[LAYER] - agree[neighbour] > 0.2, report  # measured 0.92 vs 0.44 / 0.56

    # Greedy next tokens: the steering changes the last prediction, identically in both.
    greedy_hf = steered_hf[LAYER].argmax(dim=-1)
    assert int(greedy_hf[-1]) == int(greedy_cpp[-1]) != int(base_hf[-1].argmax()), report
    assert agree[LAYER] > 0.85, report

    # Switching the vector off restores the unsteered logits exactly.
    assert torch.equal(llama_logits(llama, ids), base_cpp)


@pytest.mark.slow
def test_llama_cpp_first_and_last_exportable_layers_and_stacking(
    smollm2: LoadedModel, llama: Any, prompt_ids: torch.Tensor, tmp_path: Path
) -> None:
    lm, ids = smollm2, prompt_ids
    n = lm.n_layers
    base_hf = hf_logits(lm, ids)
    base_cpp = llama_logits(llama, ids)
    rows = {layer: NORM * seeded_direction(lm.hidden_size, seed=layer) for layer in (2, 12, n)}
    vector = smollm2_vector(lm, rows)
    cases: list[list[int]] = [[2], [n], [2, 12, n]]
    for layers in cases:
        path = export_gguf(setting(vector, layers, 1.0, "raw"), tmp_path / "cv.gguf")
        apply_control_vector(llama, path)
        try:
            delta_cpp = llama_logits(llama, ids) - base_cpp
        finally:
            clear_control_vector(llama)
        interventions = [Intervention(layer, rows[layer]) for layer in layers]
        delta_hf = hf_logits(lm, ids, interventions) - base_hf
        cosine = centred_cosine(delta_hf, delta_cpp)
        assert cosine > 0.97, (layers, cosine)  # measured: 0.998, 0.993, 0.998


@pytest.mark.slow
def test_llama_cpp_loader_strength_and_layer_range(
    smollm2: LoadedModel, llama: Any, prompt_ids: torch.Tensor, tmp_path: Path
) -> None:
    lm, ids = smollm2, prompt_ids
    base_cpp = llama_logits(llama, ids)
    v = NORM * seeded_direction(lm.hidden_size)
    vector = smollm2_vector(lm, {LAYER: v})
    unit = export_gguf(setting(vector, [LAYER], 1.0, "raw"), tmp_path / "unit.gguf")
    half = export_gguf(setting(vector, [LAYER], 0.5, "raw"), tmp_path / "half.gguf")

    apply_control_vector(llama, half)
    by_coef = llama_logits(llama, ids)
    apply_control_vector(llama, (unit, 0.5))  # like --control-vector-scaled unit.gguf 0.5
    by_strength = llama_logits(llama, ids)
    assert not torch.equal(by_coef, base_cpp)
    torch.testing.assert_close(by_strength, by_coef, rtol=0, atol=1e-4)

    # Slot LAYER-1 outside the layer range: no effect at all.
    apply_control_vector(llama, unit, layer_start=LAYER, layer_end=lm.n_layers)
    outside = llama_logits(llama, ids)
    apply_control_vector(llama, unit, layer_start=LAYER - 1, layer_end=LAYER - 1)
    inside = llama_logits(llama, ids)
    # A later vector replaces the earlier one entirely: llama.cpp keeps slots that a short
    # buffer does not cover, so the helper must zero them (here slot LAYER-1 from `unit`).
    zero = zero_control_vector(tmp_path / "zero.gguf", lm.hidden_size, 2)
    apply_control_vector(llama, zero)
    replaced = llama_logits(llama, ids)
    clear_control_vector(llama)
    assert torch.equal(outside, base_cpp)
    assert not torch.equal(inside, base_cpp)
    assert torch.equal(replaced, base_cpp)

    with pytest.raises(SteeringError, match="hidden size"):
        apply_control_vector(
            llama, export_gguf(setting(make_vector(), [2], 1.0, "raw"), tmp_path / "small.gguf")
        )
