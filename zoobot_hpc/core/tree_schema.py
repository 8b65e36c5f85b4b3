"""The decision tree's schema (Zoobot's questions and answers): plain data, importable without torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zoobot_hpc.core.label_schemas import answer_column, preset_schema, resolve_schema

__all__ = ["TreeSchema", "answer_column"]


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
