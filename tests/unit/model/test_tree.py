import itertools
import math

import pytest
import torch

from zoobot_hpc.model.tree import TreeSchema, dirichlet_multinomial_nll, tree_loss, vote_fractions

PAIRS = {"smooth-or-featured": ["smooth", "featured", "artifact"], "edge-on": ["yes", "no"]}
DEPENDENCIES = {"smooth-or-featured": None, "edge-on": "smooth-or-featured_featured"}


def test_schema_columns_and_slices():
    schema = TreeSchema(PAIRS, DEPENDENCIES)
    assert schema.label_cols == [
        "smooth-or-featured_smooth",
        "smooth-or-featured_featured",
        "smooth-or-featured_artifact",
        "edge-on_yes",
        "edge-on_no",
    ]
    assert schema.question_slices == [slice(0, 3), slice(3, 5)]


@pytest.mark.parametrize(
    ("pairs", "dependencies", "message"),
    [
        ({}, {}, "empty"),
        ({"q": ["a"]}, {"q": None}, "at least 2 answers"),
        ({"q": ["a", "b"]}, {}, "missing \\['q'\\]"),
        ({"q": ["a", "b"]}, {"q": "q_c"}, "'q_c' is not an answer column"),
        ({"q": ["a", "a"]}, {"q": None}, "duplicate label columns"),
        ({"q": ["a", "b"], "r": ["c", "d"]}, {"q": "r_c", "r": "q_a"}, "cycle"),
    ],
)
def test_schema_rejects_mismatched_columns(pairs, dependencies, message):
    with pytest.raises(ValueError, match=message):
        TreeSchema(pairs, dependencies)


def test_dirichlet_multinomial_sums_to_one_over_all_outcomes():
    concentrations = torch.tensor([[0.7, 2.5, 4.0]], dtype=torch.float64)
    total = 5
    outcomes = torch.tensor(
        [c for c in itertools.product(range(total + 1), repeat=3) if sum(c) == total], dtype=torch.float64
    )
    probabilities = torch.exp(-dirichlet_multinomial_nll(outcomes, concentrations.expand(len(outcomes), 3)))
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-10)


def test_dirichlet_multinomial_matches_beta_binomial():
    # two answers: Beta-binomial pmf C(n, k) B(k + a, n - k + b) / B(a, b)
    a, b, n, k = 2.0, 3.0, 6, 2
    beta = lambda x, y: math.exp(math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y))  # noqa: E731
    expected = math.comb(n, k) * beta(k + a, n - k + b) / beta(a, b)
    nll = dirichlet_multinomial_nll(torch.tensor([[k, n - k]], dtype=torch.float64), torch.tensor([[a, b]]))
    assert math.exp(-nll.item()) == pytest.approx(expected, rel=1e-6)


def test_unasked_question_costs_nothing_and_losses_sum_over_questions():
    schema = TreeSchema(PAIRS, DEPENDENCIES)
    concentrations = torch.tensor([[2.0, 3.0, 1.5, 4.0, 1.2]])
    asked = torch.tensor([[3.0, 7.0, 0.0, 4.0, 2.0]])
    not_asked = torch.tensor([[3.0, 7.0, 0.0, 0.0, 0.0]])
    first = dirichlet_multinomial_nll(asked[:, :3], concentrations[:, :3])
    second = dirichlet_multinomial_nll(asked[:, 3:], concentrations[:, 3:])
    assert torch.allclose(tree_loss(asked, concentrations, schema), first + second)
    assert torch.allclose(tree_loss(not_asked, concentrations, schema), first)


def test_vote_fractions_are_dirichlet_means_per_question():
    schema = TreeSchema(PAIRS, DEPENDENCIES)
    concentrations = torch.tensor([[2.0, 3.0, 5.0, 1.0, 3.0]])
    fractions = vote_fractions(concentrations, schema)
    assert torch.allclose(fractions, torch.tensor([[0.2, 0.3, 0.5, 0.25, 0.75]]))


def test_nan_votes_count_as_a_question_never_asked_and_bf16_autocast_keeps_the_fp32_loss():
    import lightning as L

    from zoobot_hpc.data.demo import DEMO_TREE_SCHEMA
    from zoobot_hpc.model import FinetuneableZoobotTree

    L.seed_everything(0)
    model = FinetuneableZoobotTree(name="test_convnext", pretrained=False, **DEMO_TREE_SCHEMA).eval()
    images = torch.rand(4, 3, 32, 32)
    batch = {"image": images}
    for i, column in enumerate(model.label_cols):
        batch[column] = torch.tensor([10.0, 3.0, 0.0, 7.0]) + i
    with_zeros = dict(batch, **{"has-spiral-arms_yes": torch.zeros(4), "has-spiral-arms_no": torch.zeros(4)})
    with_nans = dict(
        batch,
        **{"has-spiral-arms_yes": torch.full((4,), float("nan")), "has-spiral-arms_no": torch.full((4,), float("nan"))},
    )
    with torch.no_grad():
        outputs = model.batch_outputs(batch)
        loss_zeros = model.compute_loss(outputs, with_zeros)
        loss_nans = model.compute_loss(outputs, with_nans)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs_bf16 = model.batch_outputs(batch)
            loss_bf16 = model.compute_loss(outputs_bf16, batch)
        loss_fp32 = model.compute_loss(outputs, batch)
    assert torch.isfinite(loss_nans)
    assert loss_nans == loss_zeros
    assert outputs_bf16.dtype == torch.float32
    assert abs(float(loss_bf16) - float(loss_fp32)) < 0.02 * abs(float(loss_fp32))
