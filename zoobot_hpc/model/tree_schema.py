"""The decision tree's schema (Zoobot's questions and answers): plain data, importable without torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TreeSchema:
    """Questions, their answers and which answer column each question depends on.

    The label column of each answer is f"{question}_{answer}"; the columns of one question are contiguous.
    """

    question_answer_pairs: Mapping[str, Sequence[str]]
    dependencies: Mapping[str, str | None]

    def __post_init__(self) -> None:
        pairs = {question: list(answers) for question, answers in dict(self.question_answer_pairs).items()}
        dependencies = dict(self.dependencies)
        object.__setattr__(self, "question_answer_pairs", pairs)
        object.__setattr__(self, "dependencies", dependencies)
        _validate_schema(pairs, dependencies)

    @property
    def questions(self) -> list[str]:
        """The questions, in column order."""
        return list(self.question_answer_pairs)

    @property
    def label_cols(self) -> list[str]:
        """One column per answer: f"{question}_{answer}", question by question."""
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


def answer_column(question: str, answer: str) -> str:
    """The label column holding the votes for `answer` to `question`."""
    return f"{question}_{answer}"


def _validate_schema(pairs: dict[str, list[str]], dependencies: dict[str, str | None]) -> None:
    if not pairs:
        raise ValueError("question_answer_pairs is empty: a Tree needs at least one question")
    for question, answers in pairs.items():
        if len(answers) < 2:
            raise ValueError(f"question_answer_pairs[{question!r}]={answers!r} needs at least 2 answers")
    columns = [answer_column(q, a) for q, answers in pairs.items() for a in answers]
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise ValueError(f"question_answer_pairs gives duplicate label columns {duplicates}")
    if set(dependencies) != set(pairs):
        missing, extra = sorted(set(pairs) - set(dependencies)), sorted(set(dependencies) - set(pairs))
        raise ValueError(f"dependencies must name every question once: missing {missing}, unknown {extra}")
    column_owner = {answer_column(q, a): q for q, answers in pairs.items() for a in answers}
    for question, parent in dependencies.items():
        if parent is not None and parent not in column_owner:
            raise ValueError(f"dependencies[{question!r}]={parent!r} is not an answer column of the schema")
    for question in pairs:
        seen, current = {question}, dependencies[question]
        while current is not None:
            owner = column_owner[current]
            if owner in seen:
                raise ValueError(f"dependencies form a cycle through question {question!r}")
            seen.add(owner)
            current = dependencies[owner]
