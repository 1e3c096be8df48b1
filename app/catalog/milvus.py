"""Scale-out catalog on Milvus (a server shared by stateless replicas, or a Milvus Lite file).

Same behaviour as the embedded catalog: upsert/get/delete, cosine search (inner product on unit vectors)
with collection filters and min_score, model-version isolation and reindexing from stored images. Each
entity has two vector fields, `vector` (collection space) and `instance` (copy space), each with its own
index; a token stored without an instance vector gets zeros there, which never pass a copy threshold.
Milvus has no blob type: image bytes are kept base64-encoded in a VARCHAR field; an image too large for
it is stored as a lossless PNG downscaled to at most 512 px on its longer side (enough to re-embed).
"""

from __future__ import annotations

import base64
import json

import numpy as np

from app.catalog.base import Neighbour, SearchFilter, Token, utc_now

MAX_IMAGE_CHARS = 60_000
_FIELDS = ["collection", "token_id", "metadata", "model", "created_at", "updated_at"]


def _pk(collection: str, token_id: str) -> str:
    return f"{collection}/{token_id}"


def _quote(s: str) -> str:
    return json.dumps(s)  # a double-quoted, escaped string literal for Milvus filter expressions


def _pack_image(image: bytes | None) -> str:
    if not image:
        return ""
    encoded = base64.b64encode(image).decode()
    if len(encoded) <= MAX_IMAGE_CHARS:
        return encoded
    from app.imaging import decode_image
    from app.preprocessing import downscale_max_side, encode

    for side in (512, 384, 256, 128):
        small = base64.b64encode(encode(downscale_max_side(decode_image(image), side), "png")).decode()
        if len(small) <= MAX_IMAGE_CHARS:
            return small
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
    ):
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as exc:
            raise RuntimeError("the Milvus catalog needs pymilvus: pip install 'nftlens[milvus]'") from exc
        self.dim, self.model_key, self.name, self.instance_dim = dim, model_key, name, instance_dim
        self._client = MilvusClient(uri=uri, token=token)
        if not self._client.has_collection(name):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=300)
            schema.add_field("collection", DataType.VARCHAR, max_length=128)
            schema.add_field("token_id", DataType.VARCHAR, max_length=128)
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("model", DataType.VARCHAR, max_length=256)
            schema.add_field("created_at", DataType.VARCHAR, max_length=40)
            schema.add_field("updated_at", DataType.VARCHAR, max_length=40)
            schema.add_field("image", DataType.VARCHAR, max_length=65_535)
            schema.add_field("fingerprint", DataType.VARCHAR, max_length=64)
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
        if instance_dim and not self.has_instance:
            raise RuntimeError(
                f"Milvus collection {name!r} predates instance vectors: point NFTLENS_CATALOG at a new "
                "collection name (milvus://host:port/NAME) and run `nftlens catalog reindex` into it"
            )
        self._client.load_collection(name)

    def upsert(
        self, token: Token, vector: np.ndarray, image: bytes | None = None, instance: np.ndarray | None = None
    ) -> None:
        self.upsert_many([(token, vector, image, instance)])

    def upsert_many(self, items: list[tuple]) -> None:
        """Items: (token, collection vector, image bytes or None[, instance vector or None])."""
        now = utc_now()
        pks = [_pk(t.collection, t.token_id) for t, *_ in items]
        existing = (
            {
                r["pk"]: r["created_at"]
                for r in self._client.get(self.name, ids=pks, output_fields=["created_at"])
            }
            if pks
            else {}
        )
        rows = []
        for (token, vector, image, *rest), pk in zip(items, pks, strict=True):
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
            if self.has_fingerprint:
                extra["fingerprint"] = token.fingerprint or ""
            rows.append(
                {
                    **extra,
                    "pk": pk,
                    "collection": token.collection,
                    "token_id": token.token_id,
                    "metadata": token.metadata,
                    "model": self.model_key,
                    "created_at": existing.get(pk, now),
                    "updated_at": now,
                    "image": _pack_image(image),
                    "vector": vec.tolist(),
                }
            )
        if rows:
            self._client.upsert(self.name, rows)

    def delete(self, collection: str, token_id: str) -> bool:
        if self.get(collection, token_id) is None:
            return False
        self._client.delete(self.name, ids=[_pk(collection, token_id)])
        return True

    def get(self, collection: str, token_id: str, with_vector: bool = False) -> Token | None:
        vectors = (["vector"] + (["instance"] if self.has_instance else [])) if with_vector else []
        rows = self._client.get(self.name, ids=[_pk(collection, token_id)], output_fields=_FIELDS + vectors)
        if not rows:
            return None
        r = rows[0]
        vec = np.asarray(r["vector"], dtype=np.float32) if with_vector else None
        inst = np.asarray(r["instance"], dtype=np.float32) if "instance" in vectors else None
        if inst is not None and not inst.any():
            inst = None  # stored without one
        return Token(
            r["collection"],
            r["token_id"],
            dict(r["metadata"] or {}),
            r["model"],
            r["created_at"],
            r["updated_at"],
            vec,
            inst,
        )

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
            expr.append(f"collection in [{', '.join(map(_quote, sorted(flt.collections)))}]")
        if flt.exclude_collections:
            expr.append(f"collection not in [{', '.join(map(_quote, sorted(flt.exclude_collections)))}]")
        if flt.exclude:
            expr.append(f"pk != {_quote(_pk(*flt.exclude))}")
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

    def count(self) -> int:
        return self._count("")

    def stale_count(self) -> int:
        return self._count(f"model != {_quote(self.model_key)}")

    def collections(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rows in self._pages("", ["collection"]):
            for r in rows:
                out[r["collection"]] = out.get(r["collection"], 0) + 1
        return out

    def _pages(self, expr: str, fields: list[str], batch: int = 256):
        last = ""
        while True:
            cond = f"pk > {_quote(last)}" + (f" and ({expr})" if expr else "")
            rows = self._client.query(self.name, filter=cond, output_fields=["pk", *fields], limit=batch)
            if not rows:
                return
            rows.sort(key=lambda r: r["pk"])
            yield rows
            last = rows[-1]["pk"]

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
        hits = [Neighbour(r["collection"], r["token_id"], 1.0, dict(r["metadata"] or {})) for r in rows]
        return [h for h in hits if flt.allows(h.collection, h.token_id, 1.0)]

    def image(self, collection: str, token_id: str) -> bytes | None:
        """The stored image bytes of a token (None when absent or stored without an image)."""
        rows = self._client.get(self.name, ids=[_pk(collection, token_id)], output_fields=["image"])
        return base64.b64decode(rows[0]["image"]) if rows and rows[0]["image"] else None

    def iter_images(self, only_stale: bool = True, batch: int = 256):
        expr = 'image != ""' + (f" and model != {_quote(self.model_key)}" if only_stale else "")
        for rows in self._pages(expr, ["collection", "token_id", "metadata", "image"], batch):
            yield [
                (
                    Token(r["collection"], r["token_id"], dict(r["metadata"] or {})),
                    base64.b64decode(r["image"]),
                )
                for r in rows
            ]

    def close(self) -> None:
        self._client.close()
