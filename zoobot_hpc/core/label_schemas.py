"""Galaxy Zoo decision trees by name, as Zoobot and galaxy-datasets publish them (no torch import).

Answers are written in Zoobot's format (`"_smooth"`): the label column is `question + answer`, e.g.
`smooth-or-featured-dr5_smooth`. The "ortho" trees append the campaign to every question (`-dr5`, `-gz2`, ...) so
that votes from different campaigns never share a column. Source of every tree:
`galaxy_datasets/shared/label_metadata.py` (paired with its dependencies as in `zoobot/shared/schemas.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Pairs = dict[str, list[str]]
Dependencies = dict[str, str | None]


def answer_column(question: str, answer: str) -> str:
    """The label column of `answer` to `question`: Zoobot's `question + "_smooth"`, or ours `question_smooth`."""
    return question + answer if answer.startswith("_") else f"{question}_{answer}"


def _with_suffix(pairs: Pairs, dependencies: Dependencies, suffix: str) -> tuple[Pairs, Dependencies]:
    """The same tree with `suffix` appended to every question (and to the question part of each dependency)."""

    def rename(column: str | None) -> str | None:
        if column is None:
            return None
        question, _, answer = column.partition("_")
        return f"{question}{suffix}_{answer}"

    return (
        {question + suffix: list(answers) for question, answers in pairs.items()},
        {question + suffix: rename(parent) for question, parent in dependencies.items()},
    )


# GZ DECaLS DR5 / DR8 (and DESI, which reuses the DR8 questions without a suffix)
_DECALS_PAIRS: Pairs = {
    "smooth-or-featured": ["_smooth", "_featured-or-disk", "_artifact"],
    "disk-edge-on": ["_yes", "_no"],
    "has-spiral-arms": ["_yes", "_no"],
    "bar": ["_strong", "_weak", "_no"],
    "bulge-size": ["_dominant", "_large", "_moderate", "_small", "_none"],
    "how-rounded": ["_round", "_in-between", "_cigar-shaped"],
    "edge-on-bulge": ["_boxy", "_none", "_rounded"],
    "spiral-winding": ["_tight", "_medium", "_loose"],
    "spiral-arm-count": ["_1", "_2", "_3", "_4", "_more-than-4", "_cant-tell"],
    "merging": ["_none", "_minor-disturbance", "_major-disturbance", "_merger"],
}
_DECALS_DEPENDENCIES: Dependencies = {
    "smooth-or-featured": None,
    "disk-edge-on": "smooth-or-featured_featured-or-disk",
    "has-spiral-arms": "disk-edge-on_no",
    "bar": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "how-rounded": "smooth-or-featured_smooth",
    "edge-on-bulge": "disk-edge-on_yes",
    "spiral-winding": "has-spiral-arms_yes",
    "spiral-arm-count": "has-spiral-arms_yes",
    "merging": None,
}
# GZ DECaLS DR1/2: the same questions with the earlier answers
_DECALS_DR12_PAIRS: Pairs = {
    **_DECALS_PAIRS,
    "bar": ["_yes", "_no"],
    "bulge-size": ["_dominant", "_obvious", "_none"],
    "how-rounded": ["_completely", "_in-between", "_cigar-shaped"],
    "spiral-arm-count": ["_1", "_2", "_3", "_4", "_more-than-4"],
    "merging": ["_neither", "_tidal-debris", "_both", "_merger"],
}
# Galaxy Zoo 2 (and GZ UKIDSS, the same tree)
_GZ2_PAIRS: Pairs = {
    "smooth-or-featured": ["_smooth", "_featured-or-disk", "_artifact"],
    "disk-edge-on": ["_yes", "_no"],
    "has-spiral-arms": ["_yes", "_no"],
    "bar": ["_yes", "_no"],
    "bulge-size": ["_dominant", "_obvious", "_just-noticeable", "_no"],
    "something-odd": ["_yes", "_no"],
    "how-rounded": ["_round", "_in-between", "_cigar"],
    "bulge-shape": ["_round", "_boxy", "_no-bulge"],
    "spiral-winding": ["_tight", "_medium", "_loose"],
    "spiral-arm-count": ["_1", "_2", "_3", "_4", "_more-than-4", "_cant-tell"],
}
_GZ2_DEPENDENCIES: Dependencies = {
    "smooth-or-featured": None,
    "disk-edge-on": "smooth-or-featured_featured-or-disk",
    "has-spiral-arms": "smooth-or-featured_featured-or-disk",
    "bar": "smooth-or-featured_featured-or-disk",
    "bulge-size": "smooth-or-featured_featured-or-disk",
    "something-odd": None,
    "how-rounded": "smooth-or-featured_smooth",
    "bulge-shape": "disk-edge-on_yes",
    "spiral-winding": "has-spiral-arms_yes",
    "spiral-arm-count": "has-spiral-arms_yes",
}
# GZ Hubble (v2 leaves out the clump questions)
_HUBBLE_PAIRS: Pairs = {
    "smooth-or-featured": ["_smooth", "_features", "_artifact"],
    "how-rounded": ["_completely", "_in-between", "_cigar-shaped"],
    "clumpy-appearance": ["_yes", "_no"],
    "disk-edge-on": ["_yes", "_no"],
    "bulge-shape": ["_rounded", "_boxy", "_none"],
    "bar": ["_yes", "_no"],
    "has-spiral-arms": ["_yes", "_no"],
    "spiral-winding": ["_tight", "_medium", "_loose"],
    "spiral-arm-count": ["_1", "_2", "_3", "_4", "_5-plus", "_cant-tell"],
    "bulge-size": ["_none", "_just-noticeable", "_obvious", "_dominant"],
    "galaxy-symmetrical": ["_yes", "_no"],
    "clumps-embedded-larger-object": ["_yes", "_no"],
}
_HUBBLE_DEPENDENCIES: Dependencies = {
    "smooth-or-featured": None,
    "how-rounded": "smooth-or-featured_smooth",
    "clumpy-appearance": "smooth-or-featured_features",
    "galaxy-symmetrical": "clumpy-appearance_yes",
    "clumps-embedded-larger-object": "clumpy-appearance_yes",
    "disk-edge-on": "clumpy-appearance_no",
    "bulge-shape": "disk-edge-on_yes",
    "bar": "disk-edge-on_no",
    "has-spiral-arms": "disk-edge-on_no",
    "spiral-winding": "disk-edge-on_no",
    "spiral-arm-count": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
}
_HUBBLE_V2_QUESTIONS = (
    "smooth-or-featured",
    "how-rounded",
    "disk-edge-on",
    "bulge-shape",
    "bar",
    "has-spiral-arms",
    "spiral-winding",
    "spiral-arm-count",
    "bulge-size",
)
_HUBBLE_V2_PAIRS: Pairs = {question: _HUBBLE_PAIRS[question] for question in _HUBBLE_V2_QUESTIONS}
_HUBBLE_V2_DEPENDENCIES: Dependencies = {
    **{question: _HUBBLE_DEPENDENCIES[question] for question in _HUBBLE_V2_QUESTIONS},
    "disk-edge-on": "smooth-or-featured_features",
}
# GZ CANDELS
_CANDELS_PAIRS: Pairs = {
    "smooth-or-featured": ["_smooth", "_features", "_artifact"],
    "how-rounded": ["_completely", "_in-between", "_cigar-shaped"],
    "clumpy-appearance": ["_yes", "_no"],
    "disk-edge-on": ["_yes", "_no"],
    "edge-on-bulge": ["_yes", "_no"],
    "bar": ["_yes", "_no"],
    "has-spiral-arms": ["_yes", "_no"],
    "spiral-winding": ["_tight", "_medium", "_loose"],
    "spiral-arm-count": ["_1", "_2", "_3", "_4", "_5-plus", "_cant-tell"],
    "bulge-size": ["_none", "_obvious", "_dominant"],
    "merging": ["_merger", "_tidal-debris", "_both", "_neither"],
}
_CANDELS_DEPENDENCIES: Dependencies = {
    "smooth-or-featured": None,
    "how-rounded": "smooth-or-featured_smooth",
    "clumpy-appearance": "smooth-or-featured_features",
    "disk-edge-on": "clumpy-appearance_no",
    "edge-on-bulge": "disk-edge-on_yes",
    "bar": "disk-edge-on_no",
    "has-spiral-arms": "disk-edge-on_no",
    "spiral-winding": "disk-edge-on_no",
    "spiral-arm-count": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "merging": None,
}
# GZ Cosmic Dawn (HSC) and GZ Euclid (which adds ghosts to the artifact answers)
_COSMIC_DAWN_PAIRS: Pairs = {  # DECaLS' questions, a "problem" branch instead of "artifact", clumps
    **_DECALS_PAIRS,
    "smooth-or-featured": ["_smooth", "_featured-or-disk", "_problem"],
    "clumps": ["_yes", "_no"],
    "problem": ["_star", "_artifact", "_zoom"],
    "artifact": ["_satellite", "_scattered", "_diffraction", "_ray", "_saturation", "_other"],
}
_COSMIC_DAWN_DEPENDENCIES: Dependencies = {
    "smooth-or-featured": None,
    "problem": "smooth-or-featured_problem",
    "artifact": "problem_artifact",
    "disk-edge-on": "smooth-or-featured_featured-or-disk",
    "clumps": "disk-edge-on_no",
    "has-spiral-arms": "disk-edge-on_no",
    "bar": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "how-rounded": "smooth-or-featured_smooth",
    "edge-on-bulge": "disk-edge-on_yes",
    "spiral-winding": "has-spiral-arms_yes",
    "spiral-arm-count": "has-spiral-arms_yes",
    "merging": None,
}
_EUCLID_PAIRS: Pairs = {**_COSMIC_DAWN_PAIRS, "artifact": [*_COSMIC_DAWN_PAIRS["artifact"], "_ghost"]}
# GZ JWST CEERS (COSMOS leaves out how-rounded)
_JWST_PAIRS: Pairs = {
    "smooth-or-featured": ["_smooth", "_featured-or-disk", "_star-artifact-zoom"],
    "disk-edge-on": ["_yes", "_no"],
    "has-spiral-arms": ["_yes", "_no"],
    "bar": ["_strong", "_weak", "_no"],
    "bulge-size": ["_dominant", "_large", "_moderate", "_small", "_none"],
    "how-rounded": ["_round", "_in-between", "_cigar-shaped"],
    "edge-on-bulge": ["_boxy", "_none", "_rounded"],
    "spiral-winding": ["_tight", "_medium", "_loose"],
    "spiral-arm-count": ["_1", "_2", "_3", "_4", "_more-than-4", "_cant-tell"],
    "clumps": ["_yes", "_no"],
    "merging": ["_none", "_minor-disturbance", "_major-disturbance", "_merger"],
    "problem": ["_star", "_artifact", "_bad-zoom"],
}
_JWST_DEPENDENCIES: Dependencies = {
    "smooth-or-featured": None,
    "disk-edge-on": "smooth-or-featured_featured-or-disk",
    "has-spiral-arms": "disk-edge-on_no",
    "bar": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "how-rounded": "smooth-or-featured_smooth",
    "edge-on-bulge": "disk-edge-on_yes",
    "spiral-winding": "has-spiral-arms_yes",
    "spiral-arm-count": "has-spiral-arms_yes",
    "merging": None,
    "clumps": None,
    "problem": "smooth-or-featured_star-artifact-zoom",
}


def _without(pairs: Pairs, dependencies: Dependencies, question: str) -> tuple[Pairs, Dependencies]:
    return (
        {q: a for q, a in pairs.items() if q != question},
        {q: d for q, d in dependencies.items() if q != question},
    )


def _joined(*trees: tuple[Pairs, Dependencies]) -> tuple[Pairs, Dependencies]:
    pairs: Pairs = {}
    dependencies: Dependencies = {}
    for tree_pairs, tree_dependencies in trees:
        pairs.update(tree_pairs)
        dependencies.update(tree_dependencies)
    return pairs, dependencies


_DR12 = _with_suffix(_DECALS_DR12_PAIRS, _DECALS_DEPENDENCIES, "-dr12")
_DR5 = _with_suffix(_DECALS_PAIRS, _DECALS_DEPENDENCIES, "-dr5")
_DR8 = _with_suffix(_DECALS_PAIRS, _DECALS_DEPENDENCIES, "-dr8")
_GZ2 = _with_suffix(_GZ2_PAIRS, _GZ2_DEPENDENCIES, "-gz2")
_CANDELS = _with_suffix(_CANDELS_PAIRS, _CANDELS_DEPENDENCIES, "-candels")
_HUBBLE = _with_suffix(_HUBBLE_PAIRS, _HUBBLE_DEPENDENCIES, "-hubble")
_HUBBLE_V2 = _with_suffix(_HUBBLE_V2_PAIRS, _HUBBLE_V2_DEPENDENCIES, "-hubble")
_COSMIC_DAWN = _with_suffix(_COSMIC_DAWN_PAIRS, _COSMIC_DAWN_DEPENDENCIES, "-cd")
_EUCLID = _with_suffix(_EUCLID_PAIRS, _COSMIC_DAWN_DEPENDENCIES, "-euclid")
_ALL_DECALS = _joined(_DR12, _DR5, _DR8)

PRESETS: dict[str, tuple[Pairs, Dependencies]] = {
    "decals_dr5_ortho": _DR5,
    "decals_dr8_ortho": _DR8,
    "decals_dr12_ortho": _DR12,
    "decals_all_campaigns_ortho": _ALL_DECALS,
    "gz2_ortho": _GZ2,
    "gz_candels_ortho": _CANDELS,
    "gz_hubble_ortho": _HUBBLE,
    "gz_hubble_v2_ortho": _HUBBLE_V2,
    "cosmic_dawn_ortho": _COSMIC_DAWN,
    "cosmic_dawn": (_COSMIC_DAWN_PAIRS, _COSMIC_DAWN_DEPENDENCIES),
    "gz_rings": ({"ring": ["_yes", "_no"]}, {"ring": None}),
    "desi": (_DECALS_PAIRS, _DECALS_DEPENDENCIES),
    "gz_evo_v1": _joined(_ALL_DECALS, _GZ2, _CANDELS, _HUBBLE, _COSMIC_DAWN),
    "gz_evo_v1_public": _joined(_ALL_DECALS, _GZ2, _CANDELS, _HUBBLE),
    "gz_evo_v2": _joined(_ALL_DECALS, _GZ2, _CANDELS, _HUBBLE_V2, _COSMIC_DAWN, _EUCLID),
    "gz_evo_v2_public": _joined(_ALL_DECALS, _GZ2, _CANDELS, _HUBBLE_V2),
    "gz_ukidss": _with_suffix(_GZ2_PAIRS, _GZ2_DEPENDENCIES, "-ukidss"),
    "gz_jwst": _with_suffix(_JWST_PAIRS, _JWST_DEPENDENCIES, "-jwst"),
    "gz_jwst_cosmos": _with_suffix(*_without(_JWST_PAIRS, _JWST_DEPENDENCIES, "how-rounded"), "-jwst"),
    "euclid_ortho": _EUCLID,
    "euclid": (_EUCLID_PAIRS, _COSMIC_DAWN_DEPENDENCIES),
}
ALIASES = {
    "gz2": "gz2_ortho",
    "decals_dr5": "decals_dr5_ortho",
    "decals_dr8": "decals_dr8_ortho",
    "decals_dr12": "decals_dr12_ortho",
    "gz_candels": "gz_candels_ortho",
    "gz_hubble": "gz_hubble_ortho",
}


def schema_names() -> list[str]:
    """Every preset name, aliases included."""
    return sorted([*PRESETS, *ALIASES])


def preset_schema(name: str) -> tuple[Pairs, Dependencies]:
    """(question_answer_pairs, dependencies) of the named tree; copies, safe to change."""
    tree = PRESETS.get(ALIASES.get(name, name))
    if tree is None:
        raise ValueError(f"schema={name!r} is not a known Galaxy Zoo tree; choose one of {schema_names()}")
    pairs, dependencies = tree
    return {q: list(a) for q, a in pairs.items()}, dict(dependencies)


def schema_problems(pairs: Mapping[str, Sequence[str]], dependencies: Mapping[str, str | None]) -> list[str]:
    """Every reason (one line each) why `pairs` / `dependencies` do not form a decision tree; empty when valid.

    Dependencies of questions the tree does not ask are ignored, as Zoobot ignores them (its shared
    `decals_ortho_dependencies` covers DR1/2, DR5 and DR8 at once).
    """
    problems = []
    if not pairs:
        return ["question_answer_pairs is empty: a Tree needs at least one question"]
    for question, answers in pairs.items():
        if len(answers) < 2:
            problems.append(f"question_answer_pairs[{question!r}]={list(answers)!r} needs at least 2 answers")
    columns = [answer_column(q, a) for q, answers in pairs.items() for a in answers]
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        problems.append(f"question_answer_pairs gives duplicate label columns {duplicates}")
    missing = [question for question in pairs if question not in dependencies]
    if missing:
        problems.append(f"dependencies must name every question: missing {missing}")
        return problems
    column_owner = {answer_column(q, a): q for q, answers in pairs.items() for a in answers}
    for question in pairs:
        parent = dependencies[question]
        if parent is not None and parent not in column_owner:
            problems.append(f"dependencies[{question!r}]={parent!r} is not an answer column of the schema")
    if problems:
        return problems
    for question in pairs:
        seen, current = {question}, dependencies[question]
        while current is not None:
            owner = column_owner[current]
            if owner in seen:
                return [f"dependencies form a cycle through question {question!r}"]
            seen.add(owner)
            current = dependencies[owner]
    return []


def resolve_schema(
    name: str | None, pairs: Mapping[str, Sequence[str]] | None, dependencies: Mapping[str, str | None] | None
) -> tuple[Pairs, Dependencies]:
    """The tree a config describes: a preset `name`, or explicit pairs and dependencies (or both when equal).

    Dependencies of questions not asked are dropped; raises ValueError naming the first problem.
    """
    if name is not None:
        preset_pairs, preset_dependencies = preset_schema(name)
        given = pairs is not None or dependencies is not None
        if given and (_normalised(pairs or {}, dependencies or {}) != (preset_pairs, preset_dependencies)):
            raise ValueError(f"model.schema={name!r} and question_answer_pairs/dependencies disagree: give one of them")
        return preset_pairs, preset_dependencies
    if pairs is None or dependencies is None:
        raise ValueError("a tree needs model.schema (a named tree) or both question_answer_pairs and dependencies")
    problems = schema_problems(pairs, dependencies)
    if problems:
        raise ValueError(problems[0])
    return _normalised(pairs, dependencies)


def _normalised(
    pairs: Mapping[str, Sequence[str]], dependencies: Mapping[str, str | None]
) -> tuple[Pairs, Dependencies]:
    return (
        {q: list(a) for q, a in pairs.items()},
        {q: dependencies[q] for q in pairs if q in dependencies},
    )
