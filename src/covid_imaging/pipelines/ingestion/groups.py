"""Patient / scan group ids, so that no patient or scan ends up in two splits.

Rules, by source (the file stem is the name without folder and extension):

* ``ieee8023*``: the ``patientid`` column of the metadata CSV (matched by path).
* ``shenzhen``: ``CHNCXR_0001_0`` → ``0001`` (one radiograph per patient).
* ``kermany``: ``person1054_bacteria_2988`` → ``person1054``; ``IM-0129-0001`` →
  ``IM-0129``; ``NORMAL2-IM-0383-0001`` → ``NORMAL2-IM-0383`` (a separate id space).
* ``ucsd_covid_ct``: COVID slices by source paper, i.e. the name without its
  ``-p<page>-<figure>[_k]`` suffix (``2020.02.10.20021584-p6-52_13`` →
  ``2020.02.10.20021584``); non-COVID slices named ``<n>`` or ``<n>_<k>`` by runs of
  consecutive numbers ``n`` within a folder (``1059, 1060, 1061_2`` → one scan), the rule
  the data curators used.
* ``sarscov2_ct`` (SARS-CoV-2 CT-scan dataset, no patient ids; files ``Covid_<n>`` /
  ``Non-Covid_<n>``, also the original ``Covid (<n>)``): the number follows slice order,
  consecutive numbers are neighbouring slices of one scan (scans are runs of about 10–40
  slices). Slices are grouped **per class** (the two classes are numbered separately) by
  *linked runs*: sorted numbers at most ``SARSCOV2_MAX_GAP`` = 50 apart are chained into
  one group. A scan spans at most ~40 numbers, so any two slices of one scan (and every
  sampled slice between them) are linked: no scan is ever cut in two groups, wherever
  the sample's slices fall. In the curated copy (``../shared/data``) the gaps between
  sampled numbers are either <= 18 or >= 72 (the curators left >= 30 numbers around each
  held-out run), so any gap limit from 19 to 71 gives the same 13 groups (7 COVID, 6
  non-COVID); they are coarse (several scans each), which is the price of having no ids.
  A denser copy (e.g. all 2,482 Kaggle slices) would chain into one run per class; a run
  spanning more than ``SARSCOV2_MAX_RUN_SPAN`` = 300 numbers is therefore cut into
  blocks of ``SARSCOV2_BLOCK`` = 50 numbers (the SOURCES.md suggestion), where a block
  edge can cut a scan in two (the stated limit of that fallback).
  ``Covid_131`` → ``sarscov2_ct:Covid:run131`` (``run<first number of the run>``, or
  ``run<first>-block<k>`` for a cut run).
* synthetic demo data: ``synthetic_cxr_p0007_1`` → ``p0007``, ``synthetic_ct_s0012_3`` → ``s0012``.
* anything else: the file stem (each image its own group: no leakage is possible only
  if the source has one image per patient, which the README states as a limitation).

Group ids are prefixed with the source, so ids never collide across collections.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pandas as pd

SOURCE_PREFIX_SEPARATOR = "__"

_SHENZHEN = re.compile(r"^CHNCXR_(\d+)_\d$")
_KERMANY_PERSON = re.compile(r"^(person\d+)_")
_KERMANY_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+")
_PAPER_FIGURE = re.compile(r"^(.*?)-p\d+-\d+(?:_\d+)*$")
_NUMBERED_SLICE = re.compile(r"^(\d+)(?:_\d+)?$")
_SYNTHETIC = re.compile(r"^synthetic_(?:cxr|ct)_([ps]\d+)_\d+$")
_SARSCOV2_SLICE = re.compile(r"^(Covid|Non-Covid)(?:_(\d+)| \((\d+)\))$")
SARSCOV2_MAX_GAP = 50  # > the longest scan (~40 slices): one scan's slices always link
SARSCOV2_MAX_RUN_SPAN = 300  # longer linked runs (dense copies) are cut into blocks
SARSCOV2_BLOCK = 50


def _stem_without_source_prefix(image_key: str) -> str:
    stem = PurePosixPath(image_key).stem
    return stem.split(SOURCE_PREFIX_SEPARATOR, 1)[1] if SOURCE_PREFIX_SEPARATOR in stem else stem


def group_from_file_name(image_key: str, source: str) -> str:
    """Derive the group id of one image from its file name (rules in the module doc)."""
    stem = _stem_without_source_prefix(image_key)
    for pattern in (_SYNTHETIC, _SHENZHEN, _KERMANY_PERSON, _KERMANY_IM, _PAPER_FIGURE):
        match = pattern.match(stem)
        if match:
            return f"{source}:{match.group(1)}"
    return f"{source}:{stem}"


def consecutive_number_runs(numbers: list[int]) -> dict[int, int]:
    """Map each number to the first number of its run of consecutive integers."""
    run_start: dict[int, int] = {}
    previous = None
    start = None
    for number in sorted(set(numbers)):
        if previous is None or number != previous + 1:
            start = number
        run_start[number] = start
        previous = number
    return run_start


def linked_number_runs(
    numbers: list[int], max_gap: int = SARSCOV2_MAX_GAP, max_span: int = SARSCOV2_MAX_RUN_SPAN,
    block: int = SARSCOV2_BLOCK,
) -> dict[int, str]:
    """Map each number to its linked run: sorted numbers at most ``max_gap`` apart chain
    into one run named ``run<first>``; a run spanning more than ``max_span`` numbers is cut
    into blocks of ``block`` numbers from its first number (``run<first>-block<k>``)."""
    ordered = sorted(set(numbers))
    runs: list[list[int]] = []
    for number in ordered:
        if runs and number - runs[-1][-1] <= max_gap:
            runs[-1].append(number)
        else:
            runs.append([number])
    names: dict[int, str] = {}
    for run in runs:
        first, cut = run[0], run[-1] - run[0] > max_span
        for number in run:
            names[number] = f"run{first}-block{(number - first) // block}" if cut else f"run{first}"
    return names


def sarscov2_slice(stem: str) -> tuple[str, int] | None:
    """``(class token, number)`` of a SARS-CoV-2 CT-scan slice name, else None."""
    match = _SARSCOV2_SLICE.match(stem)
    if match is None:
        return None
    return match.group(1), int(match.group(2) or match.group(3))


def assign_group_ids(candidates: pd.DataFrame, patient_ids: dict[str, str] | None = None) -> pd.Series:
    """Group id for every row: metadata patient id when known, else the file-name rule.

    ``patient_ids`` maps image keys to patient ids (e.g. from the ieee8023 metadata); the
    group is ``patient:<id>`` whatever the row's source, so one patient is one group.
    Number-named files (``<n>`` or ``<n>_<k>``) are grouped by runs of consecutive ``n``
    within the same source and folder (the non-COVID CT convention). SARS-CoV-2 CT slices
    (``Covid_<n>``, ``Non-Covid_<n>``) are grouped by linked runs per source and class
    (:func:`linked_number_runs`).
    """
    patient_ids = patient_ids or {}
    groups = []
    for row in candidates.itertuples(index=False):
        if row.image_key in patient_ids and str(patient_ids[row.image_key]).strip():
            # One id space for the whole metadata file, not per source: an ieee8023 patient
            # has images in several manifest sources (ieee8023 and ieee8023_v7).
            groups.append(f"patient:{str(patient_ids[row.image_key]).strip()}")
        else:
            groups.append(group_from_file_name(row.image_key, row.source))
    group_series = pd.Series(groups, index=candidates.index, dtype=str)

    stems = candidates["image_key"].map(_stem_without_source_prefix)
    folders = candidates["image_key"].map(lambda key: str(PurePosixPath(key).parent))
    numbers = stems.str.extract(_NUMBERED_SLICE.pattern, expand=False)
    is_numbered = numbers.notna() & ~candidates["image_key"].isin(list(patient_ids))
    numbered = candidates[is_numbered]
    for (source, folder), index in numbered.groupby(["source", folders[is_numbered]]).groups.items():
        runs = consecutive_number_runs([int(numbers[i]) for i in index])
        for i in index:
            group_series[i] = f"{source}:{folder}:run{runs[int(numbers[i])]}"

    slices = stems.map(sarscov2_slice)
    is_slice = slices.notna() & ~candidates["image_key"].isin(list(patient_ids))
    if is_slice.any():
        tokens = slices[is_slice].map(lambda item: item[0])
        for (source, token), index in candidates[is_slice].groupby(["source", tokens]).groups.items():
            runs = linked_number_runs([slices[i][1] for i in index])
            for i in index:
                group_series[i] = f"{source}:{token}:{runs[slices[i][1]]}"
    return group_series
