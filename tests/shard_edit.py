"""Rewrite a pair shard with edited records and make its receipt and manifest match, so the
file checks (size, sha256) pass and only the records' content can tell: for tests of
``dd verify-shards``."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds

from data_gen.shards import MANIFEST_NAME, encode_record, sha256_file


def rewrite_shard(folder: Path, shard: int, records: list[dict]) -> None:
    path = folder / f"shard-{shard:06d}.tar"
    path.unlink()
    with wds.TarWriter(str(path)) as writer:
        for r in records:
            writer.write(
                encode_record(r["index"], r["label"], r["noise"], r["tokens"], r["teacher"])
            )
    entry = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    receipt = path.with_suffix(".json")
    receipt.write_text(json.dumps({**json.loads(receipt.read_text()), **entry}))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["shards"][shard].update(entry)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
