"""Incremental indexing: only new or changed text is embedded."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bot.answers.acronyms import definitions
from bot.answers.encoder import Encoder
from bot.answers.expert_fit import refit_blends
from bot.answers.incident_vectors import incident_text, incident_vector_hash
from bot.answers.keywords import phrase_match
from bot.answers.training import TrainingQuery, encoded_form, fit_ranker, ranker_key, training_queries
from bot.errors import InvalidRequest
from bot.knowledge import load_knowledge, root_problem
from bot.models import Document, Incident, Problem
from bot.record_files import incident_document
from bot.store import SLACK_PREFIX, ChunkRow, Store
from bot.text import (
    STOPWORDS,
    content_hash,
    keyword_terms,
    normalize_query,
    spell_identifiers,
    split_camel,
    window_words,
)

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
ENCODE_BATCH = 256
SHARED_LOOKUP = 20  # chunks read to tell whether a training query's words stand in another document
# What a stored document holds beyond its text. Raising it makes the next `opsbot index` rewrite every
# document from its file (vectors are reused where the text did not change). 2: alert routes. 3: spelled titles,
# alert names in headings with a note in brackets. 4: alert names that start with an acronym (SSPDown).
# 5: HTML comments left out of the text. 6: a heading repeated in a page numbered in its anchor (#steps-1).
# 7: the short forms of a title that its document spells out, in the title's words and its vector. 8: the text of
# the title's vector kept; a short form begins a title word only before one word (SSP|Down, not CP|Us). 9: headings
# anchored as GitHub anchors them (#raise-max_connections).
INDEX_FORMAT = "9"
TITLE_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")  # a word of a spelled title that may be a short form
ONE_WORD = re.compile(r"[A-Z][a-z]+")  # what may follow a short form inside one title word: SSP|Down


@dataclass
class IndexReport:
    """What one indexing run did."""

    model_id: str
    runbooks: int = 0
    incidents: int = 0
    experts: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    embedded: int = 0
    reused: int = 0
    seconds: float = 0.0
    ranker: dict | None = None  # the fit's report when the ranker was fitted in this run
    ranker_seconds: float = 0.0  # making, embedding and fitting on its training queries (part of ``seconds``)
    problems: list[Problem] = field(default_factory=list)
    experts_fit: str = ""  # how the expert suggestions' blend was chosen (bot.answers.expert_blend)

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["problems"] = [str(p) for p in self.problems]
        return data


def embed_text(title: str, heading: str, text: str) -> str:
    """What the encoder sees: the title and heading path give a section its context."""
    title, heading = spell_identifiers(title), spell_identifiers(heading)
    head = f"{title}. {heading}." if heading else f"{title}."
    return f"{head}\n{text}"


def title_embed_text(doc: Document) -> str:
    """A document's name alone: titles decide many alert-to-runbook matches."""
    return spelled_out(doc, doc.title_text)


def document_short_forms(doc: Document) -> dict[str, list[str]]:
    """The short forms the document spells out (``acronyms.definitions`` of its text)."""
    return definitions("\n\n".join(section.text for section in doc.sections))


def short_form_of(word: str, defined: dict[str, list[str]]) -> tuple[str, str, str] | None:
    """(the short form as written, its key in ``defined``, the rest) when a title word is a defined short form
    ("HPP", "Vms", "VMIs" of VMI) or is one followed by one capitalised word ("SSPDown": an alert name whose
    acronym has no small letter to end it); None otherwise. A word in small letters is a word ("it"), not the
    short form IT, and "CPUs" is not the CP of a control plane."""
    if word == word.lower():
        return None
    if word.lower() in defined:
        return word, word.lower(), ""
    if len(word) > 2 and word[:-1].isupper() and word.endswith("s"):  # a plural: CPUs, VMIs
        return (word, word[:-1].lower(), "") if word[:-1].lower() in defined else None
    for end in range(len(word) - 2, 1, -1):  # the longest defined prefix in capitals, then one capitalised word
        head, rest = word[:end], word[end:]
        if head.isupper() and head.lower() in defined and ONE_WORD.fullmatch(rest):
            return head, head.lower(), rest
    return None


def spelled_out(doc: Document, title: str) -> str:
    """``title`` as the encoder sees it: CamelCase as words, and a short form the document spells out followed by its
    words, as a reader of the runbook knows them ("HPP (hostpath provisioner) Not Ready")."""
    title = spell_identifiers(title)
    defined = document_short_forms(doc)
    if not defined:
        return title
    done: set[str] = set()

    def spelled(m: re.Match[str]) -> str:
        word = m.group(0)
        found = short_form_of(word, defined)
        if found is None or found[1] in done:
            return word
        short, key, rest = found
        done.add(key)
        return f"{short} ({' '.join(defined[key])})" + (f" {rest}" if rest else "")

    return TITLE_WORD.sub(spelled, title)


def title_terms(store: Store, doc: Document) -> tuple[list[str], dict[str, list[str]]]:
    """The words of a document's title and declared alert names, stemmed as the full-text index stems them, in order;
    and the title's short forms that the document spells out, each with its words (HPP of HPPNotReady -> hostpath
    provisioner, when the runbook says "the hostpath provisioner (HPP)")."""
    named = split_camel(" ".join((doc.title_text, *doc.alerts)))
    defined = document_short_forms(doc)
    shorts: dict[str, str] = {}  # a title word, as the index lowers it -> its key in ``defined``
    for word in TITLE_WORD.findall(named) if defined else []:
        if (found := short_form_of(word, defined)) is not None:
            shorts[found[0].lower()] = found[1]
            if found[2]:  # SSPDown is SSP and Down too
                named += f"\n{found[0]} {found[2]}"
    words = keyword_terms(named, STOPWORDS, limit=64)
    stems = store.stems(words)
    aliases: dict[str, list[str]] = {}
    for word, stem in zip(words, stems, strict=True):
        if stem and word in shorts and stem not in aliases:
            spelled_words = keyword_terms(" ".join(defined[shorts[word]]), STOPWORDS)
            spelled = [s for s in dict.fromkeys(store.stems(spelled_words)) if s]
            if spelled and stem not in spelled:
                aliases[stem] = spelled
    return [s for s in dict.fromkeys(stems) if s], aliases


def build_chunks(doc: Document) -> list[tuple[ChunkRow, str]]:
    """Chunk rows for a document, each with the text to embed."""
    rows: list[tuple[ChunkRow, str]] = []
    labels = " ".join(doc.services + doc.tags)
    title = split_camel(doc.title_text)
    for section in doc.sections:
        for piece in window_words(section.text):
            to_embed = embed_text(doc.title, section.heading, piece)
            row = ChunkRow(
                ord=len(rows),
                heading=section.heading,
                anchor=section.anchor,
                text=piece,
                fts_title=title,
                fts_heading=split_camel(section.heading),
                fts_body=split_camel(f"{piece}\n{labels}" if labels else piece),
                embed_hash=content_hash(to_embed),
            )
            rows.append((row, to_embed))
    return rows


def _embed(
    store: Store, encoder: Encoder, texts: dict[str, str], report: IndexReport, progress: Progress | None
) -> None:
    """Embed texts in large batches, saving each batch as it is done."""
    hashes = list(texts)
    for start in range(0, len(hashes), ENCODE_BATCH):
        part = hashes[start : start + ENCODE_BATCH]
        vectors = encoder.encode([texts[h] for h in part])
        store.save_embeddings(encoder.model_id, dict(zip(part, vectors, strict=True)))
        report.embedded += len(part)
        if progress:
            progress(report.embedded, len(hashes))


def index_knowledge(store: Store, encoder: Encoder, root: Path, progress: Progress | None = None) -> IndexReport:
    """Bring the index in line with ``root``: embed what changed, drop what was removed."""
    if (problem := root_problem(root)) is not None:
        raise InvalidRequest(problem)
    with store.index_lock():  # IndexBusy while another run indexes into the same database
        return _index_knowledge(store, encoder, root, progress)


def _id_clashes(store: Store, incidents: list[Incident]) -> list[Problem]:
    """Incident files that take the id of an incident declared in Slack without being its export: neither its
    title nor its day. The file still takes over (an export may be edited), but not without a word."""
    problems = []
    for incident in incidents:
        live = store.live_incident(incident.id)
        if live is None:
            continue
        same_title = " ".join(live["title"].split()).lower() == " ".join(incident.title.split()).lower()
        same_day = datetime.fromisoformat(live["declared_at"]).date() == incident.date.date()
        if not (same_title or same_day):
            problems.append(
                Problem(
                    incident.path,
                    f"{incident.id} is also the id of an incident declared in Slack ({live['title']!r}), and this "
                    "file takes its place in search; if it is not that incident's export (`opsbot incidents "
                    "export`), give it another id.",
                )
            )
    return problems


def _embed_votes_again(store: Store, encoder: Encoder) -> None:
    """Votes whose question vector is not this model's (cast before a model change, or through a bot still on
    the previous model since), embedded again: they are compared with questions (a vote moves its document on
    the same question) and the ranker is fitted on them, and another model's vectors mean nothing here."""
    votes = store.feedback_questions(encoder.model_id)
    if votes:
        vectors = encoder.encode([normalize_query(question) for _, question in votes])
        by_row = {row_id: vector for (row_id, _), vector in zip(votes, vectors, strict=True)}
        store.set_feedback_vectors(by_row, encoder.model_id)


def _index_knowledge(store: Store, encoder: Encoder, root: Path, progress: Progress | None) -> IndexReport:
    """``index_knowledge`` under the index lock."""
    started = time.perf_counter()
    kb = load_knowledge(root)
    report = IndexReport(model_id=encoder.model_id, problems=kb.problems)
    report.runbooks = sum(1 for d in kb.documents if d.kind == "runbook")
    report.incidents = len(kb.incidents)
    report.experts = len(kb.experts)

    stored = store.document_hashes()
    previous_model = store.get_meta("model")
    same_model = previous_model == encoder.model_id
    same_format = store.get_meta("index_format", "1") == INDEX_FORMAT
    changed = [d for d in kb.documents if not (same_model and same_format and stored.get(d.path) == d.content_hash)]
    report.unchanged = len(kb.documents) - len(changed)

    chunked = {d.path: build_chunks(d) for d in changed}
    texts: dict[str, str] = {}
    title_texts = {d.path: title_embed_text(d) for d in changed}
    title_hashes = {path: content_hash(text) for path, text in title_texts.items()}
    for path, text in title_texts.items():
        texts.setdefault(title_hashes[path], text)
    for rows in chunked.values():
        for row, to_embed in rows:
            texts.setdefault(row.embed_hash, to_embed)
    changed_paths = {d.path for d in changed}
    for incident in kb.incidents:  # the expert model's view of each incident, embedded in the same batches
        if incident.path in changed_paths:
            texts.setdefault(incident_vector_hash(incident), incident_text(incident))
    known = store.known_embeddings(encoder.model_id, texts)
    missing = [h for h in texts if h not in known]
    report.reused = len(texts) - len(missing)
    _embed(store, encoder, {h: texts[h] for h in missing}, report, progress)

    for doc in changed:
        rows = [row for row, _ in chunked[doc.path]]
        terms, aliases = title_terms(store, doc)
        store.replace_document(doc, title_hashes[doc.path], rows, terms, aliases, title_texts[doc.path])
        if doc.path in stored:
            report.updated += 1
        else:
            report.added += 1
    # Documents under a folder that could not be listed (failed_paths ending in "/") stay as they were.
    folders = tuple(p for p in kb.failed_paths if p.endswith("/"))
    kept = kb.failed_paths | {p for p in stored if folders and p.startswith(folders)}
    present = {d.path for d in kb.documents} | kept
    file_ids = {i.id for i in kb.incidents}
    report.problems += _id_clashes(store, kb.incidents)
    # Incidents resolved in Slack live in the database until exported; an exported file takes over.
    removed = [
        p
        for p in stored
        if p not in present and not (p.startswith(SLACK_PREFIX) and p[len(SLACK_PREFIX) :] not in file_ids)
    ]
    store.delete_documents(removed)
    report.removed = len(removed)
    if not same_format:  # incidents resolved in Slack and not exported have no file: read again from the store
        gone = set(removed)
        for incident in store.load_incidents():
            if incident.path.startswith(SLACK_PREFIX) and incident.path in stored and incident.path not in gone:
                report.embedded += _write_incident(store, encoder, incident, learned=False)

    # Sections and titles without a vector for this model: those of documents kept from earlier runs (their files
    # are unreadable now) after a model change, and any an older opsbot's overlapping runs left without one.
    # A text is embedded only under its own hash: a title an older opsbot stored without the text of its vector
    # (an incident's id, a spelled-out short form) stays without one until its document is read again.
    remade = (
        (h, spell_identifiers(t) if head is None else embed_text(t, head, body))
        for h, t, head, body in store.vectors_missing(encoder.model_id)
    )
    unembedded = {h: text for h, text in remade if content_hash(text) == h}
    _embed(store, encoder, unembedded, report, progress)
    if changed or removed or unembedded:  # now, not after the ranker's fit: a running bot's ids of the old rows are
        store.set_meta("index_version", uuid.uuid4().hex)  # gone, and a run stopped meanwhile would leave it so

    store.replace_incidents(
        kb.incidents, keep=kept, vector_hashes={i.id: incident_vector_hash(i) for i in kb.incidents}
    )
    # The same for the expert model's view of the incidents kept with them.
    stored_incidents = {incident_vector_hash(i): incident_text(i) for i in store.load_incidents()}
    known = store.known_embeddings(encoder.model_id, stored_incidents)
    _embed(store, encoder, {h: t for h, t in stored_incidents.items() if h not in known}, report, progress)
    if "experts.yaml" not in kb.failed_paths:
        store.replace_experts(kb.experts)
        store.replace_rotations(kb.rotations)
        # So that `/oncall platform` says the rota is there and broken, not that there is no such rota.
        store.set_meta("unread_rotas", json.dumps(kb.unread_rotas))
    if "services.yaml" not in kb.failed_paths:
        store.replace_services(kb.services)
        store.set_meta("deploy_settings", json.dumps(kb.deploy_settings))
    if "channels.yaml" not in kb.failed_paths:  # a channel taken out of the file goes back to the default
        store.replace_channel_answer_modes(kb.channels, "channels.yaml")
    # The roster, services and deploy settings count as a change too: a running bot's expert model and
    # deploy rules come from them.
    config_hash = content_hash(
        repr((kb.experts, kb.rotations, kb.unread_rotas, sorted(kb.services.items()), kb.deploy_settings, kb.channels))
    )
    config_changed = store.get_meta("config_hash") != config_hash
    _embed_votes_again(store, encoder)
    key = ranker_key(store, encoder.model_id)
    stored_ranker = store.load_ranker(encoder.model_id)
    # A new index format changes what the features read (a ranker a running bot refitted on the old one is stale).
    refit = stored_ranker is None or stored_ranker[0] != key or not same_format
    ranker_started = time.perf_counter()
    if refit:
        _store_training_queries(store, encoder, kb.documents, report, progress)
    if changed or removed or unembedded or not same_model or refit:
        # A bot still serving with the previous model reloads its vectors of the sections whose text did not
        # change (and says the models differ); the next run with this model drops them.
        store.prune_embeddings(encoder.model_id, also_keep=previous_model)
    if refit:
        report.ranker = fit_ranker(store, encoder, key)
        report.ranker_seconds = time.perf_counter() - ranker_started
    blends = refit_blends(store, encoder)  # the expert model's weights, fitted on this team's own history
    report.experts_fit = blends.note if blends is not None else ""
    store.set_meta("model", encoder.model_id)
    store.set_meta("index_format", INDEX_FORMAT)
    store.set_meta("knowledge_dir", str(root.resolve()))
    if changed or removed or unembedded or not same_model or config_changed or refit:
        store.set_meta("config_hash", config_hash)
        # Last: running bots reload when they see it change, and must find the blends and the model written.
        store.set_meta("index_version", uuid.uuid4().hex)
    report.seconds = time.perf_counter() - started
    log.info(
        "indexed root=%s added=%d updated=%d removed=%d embedded=%d seconds=%.2f",
        root,
        report.added,
        report.updated,
        report.removed,
        report.embedded,
        report.seconds,
    )
    return report


def choose_training_queries(store: Store, documents: list[Document]) -> list[TrainingQuery]:
    """The ranker's training queries for the indexed ``documents``, less those another one holds word for word."""

    def held_elsewhere(query: TrainingQuery) -> bool:
        match = phrase_match(query.text)
        return bool(match) and bool(store.documents_matching(match, SHARED_LOOKUP) - {query.doc_path})

    return training_queries(documents, held_elsewhere=held_elsewhere)


def training_rows(queries: list[TrainingQuery]) -> tuple[dict[str, str], list[tuple[str, str, str, str, str]]]:
    """What the encoder sees of the queries, by content hash, and their rows as the store keeps them."""
    texts = {content_hash(encoded_form(q.text)): encoded_form(q.text) for q in queries}
    rows = [(q.doc_path, q.section, q.kind, q.text, content_hash(encoded_form(q.text))) for q in queries]
    return texts, rows


def _store_training_queries(
    store: Store, encoder: Encoder, documents: list[Document], report: IndexReport, progress: Progress | None
) -> None:
    """Make the ranker's training queries from the documents, and embed those not embedded before."""
    texts, rows = training_rows(choose_training_queries(store, documents))
    known = store.known_embeddings(encoder.model_id, texts)
    _embed(store, encoder, {h: t for h, t in texts.items() if h not in known}, report, progress)
    store.replace_ranker_queries(rows)


def index_incident(store: Store, encoder: Encoder, incident: Incident) -> None:
    """Make one incident (resolved in Slack) searchable and part of the expert model's training data, now."""
    _write_incident(store, encoder, incident, learned=True)


def _write_incident(store: Store, encoder: Encoder, incident: Incident, learned: bool) -> int:
    """Store an incident's document and its vectors; ``learned``: and the incident itself, as learned now. How
    many texts it embedded."""
    doc = incident_document(incident, content_hash(incident.path + incident.resolution + incident.title))
    rows = build_chunks(doc)
    texts = {row.embed_hash: to_embed for row, to_embed in rows}
    title_text = title_embed_text(doc)
    title_hash = content_hash(title_text)
    texts[title_hash] = title_text
    vector_hash = incident_vector_hash(incident)
    texts[vector_hash] = incident_text(incident)
    known = store.known_embeddings(encoder.model_id, texts)
    missing = {h: t for h, t in texts.items() if h not in known}
    vectors = dict(zip(missing, encoder.encode(list(missing.values())), strict=True)) if missing else {}
    terms, aliases = title_terms(store, doc)
    # One transaction: another process's `opsbot index` prunes vectors no chunk uses, and would take these if they
    # were stored before the chunks; a process stopped half-way leaves nothing for the next start to trip on.
    with store.transaction():
        # Stored when looked up, pruned since (encoding takes a while): embedded again here, which is rare.
        rest = {h: t for h, t in texts.items() if h not in vectors}
        still = store.known_embeddings(encoder.model_id, rest)
        gone = {h: t for h, t in rest.items() if h not in still}
        if gone:
            vectors |= dict(zip(gone, encoder.encode(list(gone.values())), strict=True))
        if vectors:
            store.save_embeddings(encoder.model_id, vectors)
        store.replace_document(doc, title_hash, [row for row, _ in rows], terms, aliases, title_text)
        if learned:
            store.upsert_incident(incident, vector_hash)
            store.mark_incident_learned(incident.id, datetime.now(UTC).isoformat(timespec="seconds"))
        store.set_meta("index_version", uuid.uuid4().hex)
    return len(vectors)


def index_incidents(store: Store, encoder: Encoder, incidents: list[Incident]) -> list[str]:
    """``index_incident`` for each one (resolved in Slack but not indexed yet); the ids of those it indexed.

    One that fails is logged and left out; the others are still indexed.
    """
    indexed = []
    for incident in incidents:
        try:
            index_incident(store, encoder, incident)
        except Exception:  # the caller's next run tries this one again
            log.exception("could not index resolved incident id=%s", incident.id)
            continue
        indexed.append(incident.id)
    if indexed:
        log.info("resolved incidents indexed late count=%d ids=%s", len(indexed), ",".join(indexed))
    return indexed
