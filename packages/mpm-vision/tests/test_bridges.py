from __future__ import annotations

import pytest
import torch

from mpm_vision import BRIDGES, Bridge, BridgeConfig, create_bridge, register_bridge
from mpm_vision.bridges import bridge_from_config


@pytest.mark.parametrize(
    ("kind", "expected_tokens"),
    [("mlp", 16), ("query", 5), ("perceiver", 5), ("qformer", 5), ("pooled", 5)],
)
def test_every_kind_maps_features_to_llm_width(kind: str, expected_tokens: int) -> None:
    bridge = create_bridge(kind, in_dim=24, out_dim=40, num_queries=5)
    x = torch.randn(3, 16, 24, requires_grad=True)
    out = bridge(x)
    assert out.shape == (3, expected_tokens, 40)
    assert bridge.num_output_tokens(16) == expected_tokens
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the output depends on the features
    # rebuilding from the JSON config gives the same architecture
    clone = bridge_from_config(BridgeConfig.from_json(bridge.config.to_json()))
    clone.load_state_dict(bridge.state_dict())
    torch.testing.assert_close(clone(x), out)


def test_mlp_is_llava_projector() -> None:
    b = create_bridge("mlp", in_dim=8, out_dim=12)
    x = torch.randn(2, 3, 8)
    ref = b.linear_2(torch.nn.functional.gelu(b.linear_1(x)))
    torch.testing.assert_close(b(x), ref)
    assert create_bridge("mlp", in_dim=8, out_dim=12, depth=1)(x).shape == (2, 3, 12)


def test_query_bridge_multiway_has_separate_experts_and_queries_see_patches() -> None:
    plain = create_bridge("query", in_dim=32, out_dim=16, num_queries=4, depth=1)
    multi = create_bridge("query", in_dim=32, out_dim=16, num_queries=4, depth=1, multiway=True)
    assert sum(p.numel() for p in multi.parameters()) > sum(p.numel() for p in plain.parameters())
    assert multi.blocks[0].ffn_query is not None
    x = torch.randn(1, 9, 32)
    y = x.clone()
    y[:, 0] = torch.randn(32) * 3  # (a constant shift would vanish in LayerNorm)
    assert not torch.allclose(multi(x), multi(y))  # queries attend to the patch tokens
    # VisCPM's mapping: Linear -> GELU -> Linear on the query outputs
    assert [type(m).__name__ for m in plain.proj] == ["Linear", "GELU", "Linear"]


def test_perceiver_and_qformer_options() -> None:
    p = create_bridge("perceiver", in_dim=32, out_dim=16, num_queries=3, depth=3, num_heads=2, dim=48)
    assert len(p.layers) == 3 and p.latents.shape == (3, 48)
    q = create_bridge("qformer", in_dim=32, out_dim=16, num_queries=3, depth=1, num_heads=4)
    assert len(q.decoder.layers) == 1
    assert q(torch.randn(2, 7, 32)).shape == (2, 3, 16)


def test_registry_errors_and_extension() -> None:
    with pytest.raises(ValueError, match="unknown bridge kind 'nope'"):
        create_bridge("nope", in_dim=4, out_dim=4)
    with pytest.raises(ValueError, match="unknown options"):
        create_bridge("query", in_dim=4, out_dim=4, depht=2)
    with pytest.raises(ValueError, match=r"features \[B, N, 8\]"):
        create_bridge("mlp", in_dim=8, out_dim=4)(torch.zeros(1, 2, 5))

    @register_bridge("mean_pool_test")
    class MeanPool(Bridge):
        def __init__(self, config: BridgeConfig) -> None:
            super().__init__()
            self.config = config
            self.proj = torch.nn.Linear(config.in_dim, config.out_dim)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.proj(features.mean(1, keepdim=True))

        def num_output_tokens(self, num_input_tokens: int) -> int:
            return 1

    try:
        b = create_bridge("mean_pool_test", in_dim=4, out_dim=6)
        assert b(torch.randn(2, 5, 4)).shape == (2, 1, 6)
        with pytest.raises(ValueError, match="already registered"):
            register_bridge("mlp")(MeanPool)
    finally:
        BRIDGES.pop("mean_pool_test")


def test_pooled_bridge_sees_the_mean_of_the_tokens_only() -> None:
    bridge = create_bridge("pooled", in_dim=24, out_dim=40, num_queries=4, hidden_dim=32)
    x = torch.randn(2, 9, 24)
    out = bridge(x)
    assert out.shape == (2, 4, 40)
    assert torch.allclose(bridge(x[:, torch.randperm(9)]), out, atol=1e-5)  # order does not matter
    assert torch.allclose(bridge(x.mean(1, keepdim=True)), out, atol=1e-5)
    assert not torch.allclose(out[:, 0], out[:, 1])  # K distinct tokens
