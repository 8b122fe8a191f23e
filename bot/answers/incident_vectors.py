"""Past incidents as the expert model matches them: their text and words, their vectors (cached), a word index."""

from __future__ import annotations

import numpy as np

from bot.answers.encoder import Encoder
from bot.models import Incident
from bot.text import content_hash, normalize_query, split_camel, strip_volatile


def incident_text(incident: Incident) -> str:
    """What an incident looked like when it started, as a question would say it: its title and summary."""
    return normalize_query(f"{incident.title}. {incident.summary}")


def incident_words(incident: Incident) -> str:
    """The words an incident is matched by: title, summary and cause (which names components and files), with each
    CamelCase name both whole and spelt out (KafkaConsumerLagHigh, and Kafka Consumer Lag High), as search has them."""
    return split_camel(strip_volatile(f"{incident.title}. {incident.summary} {incident.root_cause}"))


def incident_vector_hash(incident: Incident) -> str:
    return content_hash("incident:" + incident_text(incident))


def embed_incidents(incidents: list[Incident], encoder: Encoder, store: object | None = None) -> np.ndarray:
    """Incident vectors, reusing those already stored for the same text and model."""
    if not incidents:
        return np.zeros((0, 0), dtype=np.float32)
    texts = [incident_text(i) for i in incidents]
    hashes = [incident_vector_hash(i) for i in incidents]
    cached: dict[str, np.ndarray] = store.vectors_for(encoder.model_id, hashes) if store is not None else {}
    missing = [i for i, h in enumerate(hashes) if h not in cached]
    if missing:
        fresh = encoder.encode([texts[i] for i in missing])
        new = {hashes[i]: fresh[n] for n, i in enumerate(missing)}
        if store is not None:
            store.save_embeddings(encoder.model_id, new)
        cached.update(new)
    return np.stack([cached[h] for h in hashes]).astype(np.float32)


class WordIndex:
    """TF-IDF vectors of incidents' words: component names, error strings and metric names match as written."""

    def __init__(self, texts: list[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer  # imported on first training

        self.size = len(texts)
        self.vectorizer = TfidfVectorizer(sublinear_tf=True) if texts else None
        self.matrix = None
        if self.vectorizer is not None:
            try:
                self.matrix = self.vectorizer.fit_transform(texts)
            except ValueError:  # no words at all (only stop words or symbols)
                self.vectorizer = None

    def similarity(self, texts: list[str]) -> np.ndarray:
        """(Q, N) cosine similarity of each text to each incident."""
        if self.vectorizer is None or self.matrix is None:
            return np.zeros((len(texts), self.size))
        return (self.vectorizer.transform(texts) @ self.matrix.T).toarray()
