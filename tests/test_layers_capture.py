"""Layer convention and activation capture: exact arithmetic on tiny models of several families."""

from __future__ import annotations

import pytest
import torch

from personavec.core.capture import Example, capture, capture_tokens, encode_example
from personavec.core.layers import check_layer, find_blocks, resolve_layers
from personavec.core.models import chat_messages
from personavec.errors import SteeringError
from tiny_models import TINY_CONFIGS, tiny_model

EXAMPLES = [
    Example(chat_messages("Hi there", system="Be brief."), "Hello! How can I help?"),
    Example(chat_messages("What is two plus two?"), "Four."),
    Example(chat_messages("Tell me about the sea in a few words please"), "Vast, blue, deep."),
    Example(chat_messages("Empty answer?"), ""),
]


def full_hidden_states(lm, example: Example) -> torch.Tensor:
    """[n_layers + 1, seq, hidden] from transformers' own hidden_states (unpadded forward)."""
    enc = encode_example(lm, example)
    ids = torch.tensor([enc.prompt_ids + enc.response_ids])
    with torch.no_grad():
        out = lm.model(ids, output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states])


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_layer_convention_matches_hidden_states(arch: str) -> None:
    lm = tiny_model(arch)
    n = len(find_blocks(lm.model))
    tokens = capture_tokens(lm, EXAMPLES[0])
    reference = full_hidden_states(lm, EXAMPLES[0])
    assert tokens.layers == list(range(n + 1))
    # Layers 0..n-1 equal hidden_states; hidden_states[n] is after the final norm, ours is not.
    torch.testing.assert_close(tokens.hidden[:n], reference[:n], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tokens.hidden[n], reference[n], atol=1e-3)


def test_last_layer_is_raw_block_output() -> None:
    lm = tiny_model("llama")
    blocks = find_blocks(lm.model)
    seen: list[torch.Tensor] = []
    handle = blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    tokens = capture_tokens(lm, EXAMPLES[1])
    handle.remove()
    full_hidden_states(lm, EXAMPLES[1])
    torch.testing.assert_close(tokens.hidden[-1], seen[-1][0])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_capture_readouts_equal_hand_computation(arch: str) -> None:
    lm = tiny_model(arch)
    groups = ["a", "b", "a", "b"]
    result = capture(lm, EXAMPLES, groups=groups, keep_per_example=True, batch_size=3)
    assert result.per_example is not None
    per_example = {name: [] for name in ("response_avg", "prompt_avg", "prompt_last")}
    for index, example in enumerate(EXAMPLES):
        states = full_hidden_states(lm, example)[: len(result.layers) - 1]  # exclude final norm
        tokens = capture_tokens(lm, example)
        states = tokens.hidden  # raw block outputs at every layer, verified above
        p = tokens.prompt_length
        expected = {
            "prompt_avg": states[:, :p].mean(dim=1),
            "prompt_last": states[:, p - 1],
            "response_avg": states[:, p:].mean(dim=1)
            if states.shape[1] > p
            else torch.zeros_like(states[:, 0]),
        }
        for name, value in expected.items():
            got = result.per_example[name][index]
            torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-4)
            per_example[name].append(value)
    # Group means: empty responses do not count towards response_avg.
    for name in per_example:
        rows = torch.stack(per_example[name])
        for label in ("a", "b"):
            members = [
                i
                for i, g in enumerate(groups)
                if g == label and (name != "response_avg" or EXAMPLES[i].response)
            ]
            assert result.counts[name][label] == len(members)
            torch.testing.assert_close(
                result.means[name][label], rows[members].mean(dim=0), rtol=1e-4, atol=1e-4
            )


def test_capture_is_independent_of_batching_and_padding() -> None:
    lm = tiny_model("llama")
    one = capture(lm, EXAMPLES, keep_per_example=True, batch_size=1)
    many = capture(lm, EXAMPLES, keep_per_example=True, batch_size=4)
    assert one.per_example is not None and many.per_example is not None
    for name in one.per_example:
        torch.testing.assert_close(one.per_example[name], many.per_example[name], atol=1e-5, rtol=0)
    torch.testing.assert_close(one.token_norm, many.token_norm, rtol=1e-5, atol=1e-5)


def test_capture_subset_of_layers_and_typical_norm() -> None:
    lm = tiny_model("qwen2")
    full = capture(lm, EXAMPLES[:2], keep_per_example=True)
    part = capture(lm, EXAMPLES[:2], layers=[2, 0], keep_per_example=True)
    assert part.layers == [0, 2]
    assert full.per_example is not None and part.per_example is not None
    torch.testing.assert_close(
        part.per_example["response_avg"], full.per_example["response_avg"][:, [0, 2]]
    )
    tokens = [capture_tokens(lm, ex) for ex in EXAMPLES[:2]]
    norms = torch.cat([t.hidden[:, t.prompt_length :].norm(dim=-1) for t in tokens], dim=1)
    torch.testing.assert_close(full.token_norm, norms.mean(dim=1), rtol=1e-4, atol=1e-4)


def test_layer_validation_errors() -> None:
    with pytest.raises(SteeringError, match=r"0\.\.3"):
        check_layer(4, 3)
    with pytest.raises(SteeringError):
        check_layer(-1, 3)
    with pytest.raises(SteeringError):
        resolve_layers([], 3)
    with pytest.raises(SteeringError, match="blocks_path"):
        find_blocks(torch.nn.Linear(2, 2))
    assert resolve_layers([3, 1, 1], 3) == [1, 3]


def test_capture_rejects_bad_arguments() -> None:
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="readouts"):
        capture(lm, EXAMPLES, readouts=["nope"])
    with pytest.raises(ValueError, match="group labels"):
        capture(lm, EXAMPLES, groups=["a"])
