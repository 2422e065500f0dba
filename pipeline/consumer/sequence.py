"""Extended sequence numbers and checkpoint rules, as KCL defines them (pure).

Order: AT_TIMESTAMP < TRIM_HORIZON < LATEST < any number < SHARD_END; ties broken by the
sub-sequence number (KPL sub-records share their parent's sequence number).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.consumer.processor import CheckpointError

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"
SHARD_END = "SHARD_END"
SENTINELS = (AT_TIMESTAMP, TRIM_HORIZON, LATEST)
_RANK = {AT_TIMESTAMP: 0, TRIM_HORIZON: 1, LATEST: 2}


@dataclass(frozen=True, slots=True)
class ExtendedSequenceNumber:
    sequence_number: str
    sub_sequence_number: int = 0

    def sort_key(self) -> tuple[int, int, int]:
        seq = self.sequence_number
        if seq in _RANK:
            return (_RANK[seq], 0, self.sub_sequence_number)
        if seq == SHARD_END:
            return (4, 0, self.sub_sequence_number)
        return (3, int(seq), self.sub_sequence_number)

    def __lt__(self, other: ExtendedSequenceNumber) -> bool:
        return self.sort_key() < other.sort_key()

    def __le__(self, other: ExtendedSequenceNumber) -> bool:
        return self.sort_key() <= other.sort_key()

    @property
    def is_sentinel(self) -> bool:
        return self.sequence_number in _RANK or self.sequence_number == SHARD_END

    @property
    def is_shard_end(self) -> bool:
        return self.sequence_number == SHARD_END


def is_valid_sequence(value: str) -> bool:
    return value.isdigit() or value in _RANK or value == SHARD_END


def validate_checkpoint(
    requested: ExtendedSequenceNumber,
    *,
    last_checkpoint: ExtendedSequenceNumber,
    largest_delivered: ExtendedSequenceNumber | None,
    shard_ended: bool,
) -> bool:
    """KCL's rule: last checkpoint ≤ requested ≤ largest delivered (SHARD_END at shard end).

    Returns False when the value equals the stored checkpoint (nothing to write); raises
    ``CheckpointError('IllegalArgumentException')`` when it is out of range.
    """
    if not is_valid_sequence(requested.sequence_number):
        raise CheckpointError(
            "IllegalArgumentException", f"not a sequence number: {requested.sequence_number!r}"
        )
    upper = ExtendedSequenceNumber(SHARD_END) if shard_ended else largest_delivered
    if requested < last_checkpoint:
        raise CheckpointError(
            "IllegalArgumentException",
            f"{requested.sequence_number}/{requested.sub_sequence_number} is before the last "
            f"checkpoint {last_checkpoint.sequence_number}/{last_checkpoint.sub_sequence_number}",
        )
    if upper is None or upper < requested:
        raise CheckpointError(
            "IllegalArgumentException",
            f"{requested.sequence_number}/{requested.sub_sequence_number} is beyond the largest "
            "record delivered",
        )
    return requested != last_checkpoint
