"""Decision-tree schema (Zoobot's questions and answers), Dirichlet-multinomial loss and vote fractions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from zoobot_hpc.model.schemas import answer_column, preset_schema, resolve_schema


@dataclass(frozen=True)
class TreeSchema:
    """Questions, their answers and which answer column each question depends on.

    Answers are ours (`"smooth"`: column `question_smooth`) or Zoobot's (`"_smooth"`: column `question + answer`);
    both give Zoobot's label columns. The columns of one question are contiguous. Dependencies of questions the
    tree does not ask are dropped, as Zoobot ignores them.
    """

    question_answer_pairs: Mapping[str, Sequence[str]]
    dependencies: Mapping[str, str | None]

    def __post_init__(self) -> None:
        pairs, dependencies = resolve_schema(None, dict(self.question_answer_pairs), dict(self.dependencies))
        object.__setattr__(self, "question_answer_pairs", pairs)
        object.__setattr__(self, "dependencies", dependencies)

    @classmethod
    def named(cls, name: str) -> TreeSchema:
        """A Galaxy Zoo tree by its preset name (`gz2`, `decals_dr5`, `desi`, ...; see `model.schemas`)."""
        return cls(*preset_schema(name))

    @property
    def questions(self) -> list[str]:
        """The questions, in column order."""
        return list(self.question_answer_pairs)

    @property
    def label_cols(self) -> list[str]:
        """One column per answer (see `answer_column`), question by question."""
        return [
            answer_column(question, answer)
            for question, answers in self.question_answer_pairs.items()
            for answer in answers
        ]

    @property
    def question_slices(self) -> list[slice]:
        """For each question, the slice of its answers' columns in `label_cols`."""
        slices, start = [], 0
        for answers in self.question_answer_pairs.values():
            slices.append(slice(start, start + len(answers)))
            start += len(answers)
        return slices


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


def tree_loss(counts: torch.Tensor, concentrations: torch.Tensor, schema: TreeSchema) -> torch.Tensor:
    """Dirichlet-multinomial NLL per galaxy summed over questions (as in Zoobot pretraining), shape (B,)."""
    per_question = [
        dirichlet_multinomial_nll(counts[:, answers], concentrations[:, answers]) for answers in schema.question_slices
    ]
    return torch.stack(per_question, dim=1).sum(dim=1)


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
