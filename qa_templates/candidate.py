"""What a task module returns: one candidate question, before option letters are assigned."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Union

Number = Union[int, float]


@dataclass
class Candidate:
    question_type: str
    # Question text; multiple-choice questions that list their choices inline write "{choices}", filled in the
    # final option order.
    question: str
    answer: Union[str, Number]         # NA: the rounded answer in benchmark units; MC: the correct option's text
    answer_value: float | None         # the exact measured value before rounding (metres, cm, m^2, seconds, count)
    options: list[str] | None = None   # MC only: option texts, correct one first, distractors after (unordered)
    object_ids: tuple[int, ...] = ()   # instance ids the question refers to
    frame_ranks: tuple[int, ...] = ()  # manifest ranks the question refers to
    categories: tuple[str, ...] = field(default=())   # category names the question mentions
    # How {choices} in the question lists the options: "comma" -> "a, b, c"; "sentence" -> "a, b, and c" / "a and b".
    choice_join: str = "comma"
    # Region questions (regionbench): the region prompts in mention order (Region [0], [1], ...), each
    # {"instance_id", "category", "frame_rank", "bbox_xyxy", "rle"}, and the largest number of the question's
    # instances that one manifest frame shows together (below len(regions): never all in the same frame).
    regions: tuple[dict, ...] = ()
    max_regions_per_frame: int = 0

    @property
    def is_multiple_choice(self) -> bool:
        return self.options is not None


def reject(rejected: Counter | None, reason: str, n: int = 1) -> None:
    """Count a rejection reason (the stats file reports them per task)."""
    if rejected is not None and n:
        rejected[reason] += n
