"""Decision-tree loss and outputs: Dirichlet-multinomial loss, vote fractions, the concentration head.

The schema itself (`TreeSchema`) is plain data in `tree_schema.py`, so that the config imports it without torch.
"""

import torch

from zoobot_hpc.core.tree_schema import TreeSchema, answer_column

__all__ = [
    "DirichletConcentrations",
    "TreeSchema",
    "answer_column",
    "dirichlet_multinomial_nll",
    "tree_loss",
    "tree_question_losses",
    "vote_fractions",
]


def dirichlet_multinomial_nll(counts: torch.Tensor, concentrations: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of vote `counts` (B, A) under DirichletMultinomial(`concentrations`): (B,).

    A question nobody answered (all counts 0) has likelihood 1, i.e. zero loss.
    """
    total_count = counts.sum(dim=-1)
    total_concentration = concentrations.sum(dim=-1)
    log_norm = (
        torch.lgamma(total_count + 1)
        + torch.lgamma(total_concentration)
        - torch.lgamma(total_count + total_concentration)
    )
    log_terms = torch.lgamma(counts + 1) + torch.lgamma(concentrations) - torch.lgamma(counts + concentrations)
    return -(log_norm - log_terms.sum(dim=-1))


def tree_question_losses(counts: torch.Tensor, concentrations: torch.Tensor, schema: TreeSchema) -> torch.Tensor:
    """Dirichlet-multinomial NLL of each galaxy and question, shape (B, Q) in `schema.questions` order."""
    per_question = [
        dirichlet_multinomial_nll(counts[:, answers], concentrations[:, answers]) for answers in schema.question_slices
    ]
    return torch.stack(per_question, dim=1)


def tree_loss(counts: torch.Tensor, concentrations: torch.Tensor, schema: TreeSchema) -> torch.Tensor:
    """Dirichlet-multinomial NLL per galaxy summed over questions (as in Zoobot pretraining), shape (B,)."""
    return tree_question_losses(counts, concentrations, schema).sum(dim=1)


def vote_fraction_errors(counts: torch.Tensor, fractions: torch.Tensor, schema: TreeSchema) -> torch.Tensor:
    """Mean absolute error of the predicted vote `fractions` (B, A) against the observed ones, per galaxy and
    question (B, Q); 0 where nobody answered the question (weight those out with `counts`)."""
    errors = []
    for answers in schema.question_slices:
        question_counts = counts[:, answers]
        total = question_counts.sum(dim=1, keepdim=True)
        observed = question_counts / total.clamp(min=1)
        errors.append((fractions[:, answers] - observed).abs().mean(dim=1) * (total.squeeze(1) > 0))
    return torch.stack(errors, dim=1)


def vote_fractions(concentrations: torch.Tensor, schema: TreeSchema) -> torch.Tensor:
    """Expected vote fraction of each answer within its question (the Dirichlet mean), shape (B, A)."""
    fractions = torch.empty_like(concentrations)
    for answers in schema.question_slices:
        question_concentrations = concentrations[:, answers]
        fractions[:, answers] = question_concentrations / question_concentrations.sum(dim=1, keepdim=True)
    return fractions


class DirichletConcentrations(torch.nn.Module):
    """Maps head outputs to Dirichlet concentrations in (1, 100), as Zoobot's tree head does."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return 1.0 + 99.0 * torch.sigmoid(logits.float())
