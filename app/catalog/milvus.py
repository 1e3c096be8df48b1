"""Scale-out catalog on Milvus (a server shared by stateless replicas, or a Milvus Lite file).

Same behaviour as the embedded catalog: upsert/get/delete, paging, cosine search (inner product on unit
vectors) with collection filters inside the search and min_score, model isolation by content (the ONNX
file's sha256) and reindexing from stored images. Every replica reads the same server, so every write is
visible to every replica's next search (consistency level Strong).

Rows are keyed by model and token (`pk` = sha256 prefix / collection / token_id), so during a rolling
deploy the old and the new model each write their own row of a token and never overwrite each other's;
each searches only its own. `nftlens catalog reindex` re-embeds tokens that have no row of the serving
model yet and then drops the other models' rows of every token it migrated.

Each entity has two vector fields, `vector` (collection space) and `instance` (copy space); a token stored
without an instance vector gets zeros there, which never pass a copy threshold. Milvus has no blob type:
image bytes are kept base64-encoded in a VARCHAR field; an image too large for it is stored as a lossless
PNG (alpha kept, so re-embedding composites it exactly as the model's preprocessing does) downscaled to
at most 512 px on its longer side.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np

from app.catalog.base import Neighbour, SearchFilter, Token, as_written, utc_now
from app.catalog.sqlite_faiss import decode_cursor, encode_cursor

MAX_IMAGE_CHARS = 60_000
_FIELDS = ["collection", "token_id", "metadata", "model", "created_at", "updated_at"]
_OPTIONAL = {"model_label": 256, "image_sha256": 64, "key": 300}  # fields added after the first release


def _key(collection: str, token_id: str) -> str:
    return f"{collection}/{token_id}"


def _quote(s: str) -> str:
    return json.dumps(s)  # a double-quoted, escaped string literal for Milvus filter expressions


def _in(field: str, values) -> str:
    return f"{field} in [{', '.join(map(_quote, values))}]"


def _pack_image(image: bytes | None) -> str:
    if not image:
        return ""
    encoded = base64.b64encode(image).decode()
    if len(encoded) <= MAX_IMAGE_CHARS:
        return encoded
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(image))
        img.seek(0)
        img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "PA", "P") else "RGB")
    except Exception:
        return ""
    for side in (512, 384, 256, 128):
        small = img.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "PNG", optimize=True)
        packed = base64.b64encode(buf.getvalue()).decode()
        if len(packed) <= MAX_IMAGE_CHARS:
            return packed
    return ""


class MilvusCatalog:
    def __init__(
        self,
        uri: str,
        dim: int,
        model_key: str,
        name: str = "nftlens_tokens",
        token: str = "",
        instance_dim: int = 0,
        model_label: str = "",
    ):
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as exc:
            raise RuntimeError("the Milvus catalog needs pymilvus: pip install 'nftlens[milvus]'") from exc
        self.dim, self.model_key, self.name, self.instance_dim = dim, model_key, name, instance_dim
        self.model_label = model_label or model_key
        self._client = MilvusClient(uri=uri, token=token)
        if not self._client.has_collection(name):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=400)
            schema.add_field("collection", DataType.VARCHAR, max_length=128)
            schema.add_field("token_id", DataType.VARCHAR, max_length=128)
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("model", DataType.VARCHAR, max_length=256)
            schema.add_field("created_at", DataType.VARCHAR, max_length=40)
            schema.add_field("updated_at", DataType.VARCHAR, max_length=40)
            schema.add_field("image", DataType.VARCHAR, max_length=65_535)
            schema.add_field("fingerprint", DataType.VARCHAR, max_length=64)
            for field, length in _OPTIONAL.items():
                schema.add_field(field, DataType.VARCHAR, max_length=length)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            if instance_dim:
                schema.add_field("instance", DataType.FLOAT_VECTOR, dim=instance_dim)
            index = self._client.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            if instance_dim:
                index.add_index(field_name="instance", index_type="FLAT", metric_type="IP")
            self._client.create_collection(
                name, schema=schema, index_params=index, consistency_level="Strong"
            )
        fields = {f["name"] for f in self._client.describe_collection(name)["fields"]}
        self.has_instance = bool(instance_dim) and "instance" in fields
        self.has_fingerprint = "fingerprint" in fields
        if (instance_dim and not self.has_instance) or not set(_OPTIONAL) <= fields:
            raise RuntimeError(
                f"Milvus collection {name!r} was created by an older nftlens: point NFTLENS_CATALOG at a new "
                "collection name (milvus://host:port/NAME) and re-index your tokens into it"
            )
        self._client.load_collection(name)

    def _pk(self, collection: str, token_id: str) -> str:
        return f"{self.model_key[:16]}/{collection}/{token_id}"

    # -- writes ------------------------------------------------------------------------------------
    def upsert(
        self, token: Token, vector: np.ndarray, image: bytes | None = None, instance: np.ndarray | None = None
    ) -> Token:
        return self.upsert_many([(token, vector, image, instance)])[0]

    def upsert_many(self, items: list[tuple]) -> list[Token]:
        """Items: (token, collection vector, image bytes or None[, instance vector or None]); returns the
        tokens as written. A token keeps the `created_at` of its first row, whichever model wrote it."""
        now = utc_now()
        keys = [_key(t.collection, t.token_id) for t, *_ in items]
        created: dict[str, str] = {}
        for r in self._rows(_in("key", keys), ["key", "created_at"]) if keys else []:
            created[r["key"]] = min(created.get(r["key"], r["created_at"]), r["created_at"])
        rows, written = [], []
        for (token, vector, image, *rest), key in zip(items, keys, strict=True):
            vec = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.dim:
                raise ValueError(f"vector has {vec.shape[0]} dims, catalog expects {self.dim}")
            extra = {}
            if self.has_instance:
                inst = rest[0] if rest and rest[0] is not None else np.zeros(self.instance_dim, np.float32)
                inst = np.asarray(inst, dtype=np.float32).reshape(-1)
                if inst.shape[0] != self.instance_dim:
                    raise ValueError(
                        f"instance vector has {inst.shape[0]} dims, catalog expects {self.instance_dim}"
                    )
                extra["instance"] = inst.tolist()
            rows.append(
                {
                    **extra,
                    "pk": self._pk(token.collection, token.token_id),
                    "key": key,
                    "collection": token.collection,
                    "token_id": token.token_id,
                    "metadata": token.metadata,
                    "model": self.model_key,
                    "model_label": self.model_label,
                    "created_at": created.get(key, now),
                    "updated_at": now,
                    "image": _pack_image(image),
                    "image_sha256": token.image_sha256 or "",
                    "fingerprint": token.fingerprint or "",
                    "vector": vec.tolist(),
                }
            )
            written.append(as_written(token, self.model_key, self.model_label, created.get(key, now), now))
        if rows:
            self._client.upsert(self.name, rows)
        return written

    def delete(self, collection: str, token_id: str) -> bool:
        expr = f"key == {_quote(_key(collection, token_id))}"
        if not self._client.query(self.name, filter=expr, output_fields=["pk"], limit=1):
            return False
        self._client.delete(self.name, filter=expr)
        return True

    def delete_collection(self, collection: str) -> int:
        """Delete every token (of every model) of a collection; returns how many tokens."""
        expr = f"collection == {_quote(collection)}"
        n = len({r["key"] for r in self._rows(expr, ["key"])})
        if n:
            self._client.delete(self.name, filter=expr)
        return n

    def drop_superseded(self) -> int:
        """Delete other models' rows of tokens that have a row of the serving model (after a reindex)."""
        current = self._current_keys()
        stale = [
            r["pk"] for r in self._rows(f"model != {_quote(self.model_key)}", ["key"]) if r["key"] in current
        ]
        for start in range(0, len(stale), 500):
            self._client.delete(self.name, ids=stale[start : start + 500])
        return len(stale)

    def sync(self) -> int:
        """Nothing to apply: every replica searches the same Milvus server."""
        return 0

    # -- reads -------------------------------------------------------------------------------------
    def _rows(self, expr: str, fields: list[str], batch: int = 1000):
        """Every row matching `expr` (query iterator: no offset limit)."""
        it = self._client.query_iterator(
            self.name, batch_size=batch, filter=expr, output_fields=["pk", *fields]
        )
        try:
            while rows := it.next():
                yield from rows
        finally:
            it.close()

    def _current_keys(self) -> set[str]:
        return {r["key"] for r in self._rows(f"model == {_quote(self.model_key)}", ["key"])}

    def _best(self, rows: list[dict]) -> dict | None:
        """Of one token's rows, the serving model's, else the newest."""
        if not rows:
            return None
        return max(rows, key=lambda r: (r["model"] == self.model_key, r["updated_at"]))

    def _token(self, r: dict, with_vector: bool = False) -> Token:
        vec = np.asarray(r["vector"], dtype=np.float32) if with_vector else None
        inst = np.asarray(r["instance"], dtype=np.float32) if with_vector and "instance" in r else None
        if inst is not None and not inst.any():
            inst = None  # stored without one
        return Token(
            r["collection"], r["token_id"], dict(r["metadata"] or {}), r["model"], r["created_at"],
            r["updated_at"], vec, inst, model_label=r.get("model_label") or r["model"],
            image_sha256=r.get("image_sha256") or "",
        )  # fmt: skip

    def get(self, collection: str, token_id: str, with_vector: bool = False) -> Token | None:
        vectors = (["vector"] + (["instance"] if self.has_instance else [])) if with_vector else []
        rows = self._client.query(
            self.name,
            filter=f"key == {_quote(_key(collection, token_id))}",
            output_fields=[*_FIELDS, *_OPTIONAL, *vectors],
        )
        best = self._best(rows)
        return self._token(best, with_vector) if best else None

    def list_tokens(
        self, collection: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Token], str | None]:
        """One page ordered by (collection, token_id) and the next page's cursor (None at the end).
        Milvus cannot sort a query, so each page scans the keys of the filter: fine to ~10^5 tokens."""
        after = decode_cursor(cursor) if cursor else None
        expr = f"collection == {_quote(collection)}" if collection is not None else ""
        keys = sorted(
            {(r["collection"], r["token_id"]) for r in self._rows(expr, ["collection", "token_id"])}
        )
        if after:
            keys = [k for k in keys if k > after]
        page = keys[:limit]
        rows: dict[tuple[str, str], list[dict]] = {}
        if page:
            for r in self._rows(_in("key", [_key(*k) for k in page]), [*_FIELDS, *_OPTIONAL]):
                rows.setdefault((r["collection"], r["token_id"]), []).append(r)
        tokens = [self._token(self._best(rows[k])) for k in page if k in rows]
        more = len(keys) > limit
        return tokens, encode_cursor(*page[-1]) if more and page else None

    def search(
        self, vector: np.ndarray, k: int, flt: SearchFilter | None = None, space: str = "collection"
    ) -> list[Neighbour]:
        if space == "instance" and not self.has_instance:
            raise ValueError("this catalog has no 'instance' vectors (the model has no such output)")
        field = "instance" if space == "instance" else "vector"
        flt = flt or SearchFilter()
        expr = [f"model == {_quote(self.model_key)}"]
        if flt.collections is not None:
            if not flt.collections:
                return []
            expr.append(_in("collection", sorted(flt.collections)))
        if flt.exclude_collections:
            expr.append(f"not ({_in('collection', sorted(flt.exclude_collections))})")
        if flt.exclude:
            expr.append(f"key != {_quote(_key(*flt.exclude))}")
        hits = self._client.search(
            self.name,
            data=[np.asarray(vector, dtype=np.float32).reshape(-1).tolist()],
            limit=k,
            anns_field=field,
            filter=" and ".join(expr),
            output_fields=["collection", "token_id", "metadata"],
            search_params={"metric_type": "IP"},
        )[0]
        out = [
            Neighbour(
                h["entity"]["collection"],
                h["entity"]["token_id"],
                float(h["distance"]),
                dict(h["entity"]["metadata"] or {}),
            )
            for h in hits
        ]
        return [n for n in out if flt.min_score is None or n.score >= flt.min_score]

    def _count(self, expr: str) -> int:
        return int(self._client.query(self.name, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

    def _stale_keys(self) -> set[str]:
        other = {r["key"] for r in self._rows(f"model != {_quote(self.model_key)}", ["key"])}
        return other - self._current_keys() if other else set()

    def count(self) -> int:
        """Tokens (not rows): the serving model's rows plus tokens only other models embedded."""
        return self._count(f"model == {_quote(self.model_key)}") + self.stale_count()

    def stale_count(self) -> int:
        return len(self._stale_keys())

    def collections(self) -> dict[str, int]:
        keys: dict[str, set[str]] = {}
        for r in self._rows("", ["collection", "key"]):
            keys.setdefault(r["collection"], set()).add(r["key"])
        return {c: len(v) for c, v in sorted(keys.items())}

    def stored_hashes(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(collection, token_id) -> (model key, image sha256), the serving model's row first."""
        out: dict[tuple[str, str], tuple[str, str]] = {}
        for r in self._rows("", ["collection", "token_id", "model", "image_sha256"]):
            key = (r["collection"], r["token_id"])
            if key not in out or r["model"] == self.model_key:
                out[key] = (r["model"], r["image_sha256"] or "")
        return out

    def find_exact(self, fingerprint: str, flt: SearchFilter | None = None) -> list[Neighbour]:
        """Tokens whose stored pixel fingerprint equals `fingerprint` (score 1.0), whatever the model."""
        flt = flt or SearchFilter()
        if not fingerprint or not self.has_fingerprint:
            return []
        rows = self._client.query(
            self.name,
            filter=f"fingerprint == {_quote(fingerprint)}",
            output_fields=["collection", "token_id", "metadata"],
        )
        hits = {(r["collection"], r["token_id"]): r for r in rows}
        out = [Neighbour(c, t, 1.0, dict(r["metadata"] or {})) for (c, t), r in sorted(hits.items())]
        return [h for h in out if flt.allows(h.collection, h.token_id, 1.0)]

    def image(self, collection: str, token_id: str) -> bytes | None:
        """The stored image bytes of a token (None when absent or stored without an image)."""
        rows = self._client.query(
            self.name,
            filter=f"key == {_quote(_key(collection, token_id))}",
            output_fields=["model", "updated_at", "image"],
        )
        best = self._best(rows)
        return base64.b64decode(best["image"]) if best and best["image"] else None

    def iter_images(self, only_stale: bool = True, batch: int = 256):
        """Lists of (Token, image bytes) to re-embed: tokens with no row of the serving model (or all)."""
        wanted = self._stale_keys() if only_stale else None
        best: dict[str, dict] = {}
        fields = ["key", "collection", "token_id", "metadata", "model", "updated_at", "image", "image_sha256"]
        for r in self._rows('image != ""', fields):
            if wanted is None or r["key"] in wanted:
                best[r["key"]] = self._best([r, *([best[r["key"]]] if r["key"] in best else [])])
        rows = list(best.values())
        for start in range(0, len(rows), batch):
            yield [
                (
                    Token(
                        r["collection"],
                        r["token_id"],
                        dict(r["metadata"] or {}),
                        image_sha256=r["image_sha256"],
                    ),
                    base64.b64decode(r["image"]),
                )
                for r in rows[start : start + batch]
            ]

    def close(self) -> None:
        self._client.close()
