"""Serialization paths for one ~1.2 KB session record, side by side in one run.

python -m benchmarks.serialization [--seconds 1]
"""

from __future__ import annotations

import argparse

import orjson

from benchmarks.common import print_ratios, session_record, time_sync
from kvstore import StateRecord
from kvstore.models.base import METADATA_FIELDS
from serializers import JSONSerializer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    seconds = parser.parse_args().seconds
    record = session_record()
    serializer = JSONSerializer()
    encoded = serializer.dumps(record, exclude=METADATA_FIELDS)
    plain = record.model_dump_json(exclude={"schema_version"}).encode()
    print(f"record: {len(encoded)} bytes serialized")

    print_ratios(
        "dumps (record -> bytes)",
        time_sync("model_dump_json()", record.model_dump_json, seconds=seconds),
        [
            time_sync(
                "kvstore JSONSerializer.dumps (with the NaN/int guard)",
                lambda: serializer.dumps(record, exclude=METADATA_FIELDS),
                seconds=seconds,
            ),
            time_sync(
                "orjson.dumps(model_dump(mode='json'))",
                lambda: orjson.dumps(record.model_dump(mode="json")),
                seconds=seconds,
            ),
        ],
    )
    print_ratios(
        "loads (bytes -> record)",
        time_sync(
            "StateRecord.model_validate_json",
            lambda: StateRecord.model_validate_json(plain),
            seconds=seconds,
        ),
        [
            time_sync(
                "kvstore JSONSerializer: schema_version + load_model",
                lambda: (
                    serializer.schema_version(encoded)
                    and serializer.load_model(encoded, StateRecord)
                ),
                seconds=seconds,
            ),
            time_sync(
                "model_validate(orjson.loads)",
                lambda: StateRecord.model_validate(orjson.loads(plain)),
                seconds=seconds,
            ),
        ],
    )


if __name__ == "__main__":
    main()
