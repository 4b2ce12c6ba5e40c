"""The ingestion pipeline: load, chunk, encode, extract and store documents in committed batches.

A first pass reads the whole corpus to validate it, so that with the default
on-error policy a bad record stops the run before anything is written. The second
pass skips documents whose content hash is already stored, which makes a re-run
idempotent and lets an interrupted run resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from expertrag.errors import CorpusFormatError
from expertrag.kg_build.chunking import Chunker
from expertrag.kg_build.extraction import SpacyExtractor
from expertrag.kg_build.loaders import CorpusLoader
from expertrag.kg_build.store import IngestedDocument, RecordStore, searchable_text
from expertrag.records import Document
from expertrag.retrievers.encoder import Encoder

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (documents done, documents to do) after each committed batch."""


@dataclass
class IngestReport:
    """Counts of one ingest run."""

    collection: str
    source: str
    documents_seen: int = 0
    documents_added: int = 0
    documents_unchanged: int = 0
    documents_skipped: int = 0
    chunks_added: int = 0
    entities_added: int = 0
    relations_added: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def documents_per_second(self) -> float:
        """Ingestion speed over the documents processed in this run."""
        return self.documents_added / self.seconds if self.seconds > 0 else 0.0


@dataclass
class IngestionPipeline:
    """Turns a corpus loader's documents into stored records."""

    store: RecordStore
    chunker: Chunker
    encoder: Encoder
    extractor: SpacyExtractor
    batch_documents: int = 64

    def run(self, loader: CorpusLoader, collection: str, progress: ProgressCallback | None = None) -> IngestReport:
        """Ingest every new or changed document of ``loader`` into ``collection``."""
        started = time.perf_counter()
        report = IngestReport(collection=collection, source=str(loader.path))

        stored = self.store.document_hashes(collection)
        pending_ids: set[str] = set()
        for document in loader:
            report.documents_seen += 1
            if stored.get(document.doc_id) == document.content_hash:
                report.documents_unchanged += 1
            else:
                pending_ids.add(document.doc_id)
        report.documents_skipped = len(loader.skipped)
        report.errors = [str(error) for error in loader.skipped]
        if report.documents_seen == 0:
            raise CorpusFormatError(str(loader.path), None, "The corpus contains no usable document")
        logger.info(
            "Ingesting %d of %d documents from %s into collection %r (%d unchanged, %d skipped)",
            len(pending_ids), report.documents_seen, loader.path, collection,
            report.documents_unchanged, report.documents_skipped,
        )

        self.store.ensure_collection(collection)
        run_id = self.store.start_run(collection, str(loader.path))
        status = "failed"
        try:
            done = 0
            if progress:
                progress(0, len(pending_ids))
            for batch in _batches(_pending(loader, pending_ids), self.batch_documents):
                items = self._process(batch, collection)
                self.store.write_documents(collection, items)
                done += len(batch)
                report.documents_added += len(batch)
                report.chunks_added += sum(len(item.chunks) for item in items)
                report.entities_added += sum(len(item.extraction.entities) for item in items)
                report.relations_added += sum(len(item.extraction.relations) for item in items)
                if progress:
                    progress(done, len(pending_ids))
                batches_done = -(-done // self.batch_documents)
                if done == len(pending_ids) or batches_done % 20 == 0:
                    logger.info("Stored %d of %d documents (%.1f documents/s)", done, len(pending_ids),
                                done / (time.perf_counter() - started))
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            report.seconds = time.perf_counter() - started
            self.store.finish_run(
                run_id, status, report.documents_added, report.documents_unchanged,
                report.documents_skipped, report.errors,
            )
        logger.info(
            "Ingested %d documents (%d chunks, %d relations) in %.1f s",
            report.documents_added, report.chunks_added, report.relations_added, report.seconds,
        )
        return report

    def _process(self, documents: list[Document], collection: str) -> list[IngestedDocument]:
        chunk_lists = self.chunker.chunk_many(documents, collection)
        flat = [chunk for chunks in chunk_lists for chunk in chunks]
        titles = {document.doc_id: document.title for document in documents}
        vectors = self.encoder.encode([searchable_text(titles[c.doc_id], c.start, c.text) for c in flat])
        extractions = self.extractor.extract_documents([document.text for document in documents], chunk_lists)

        items: list[IngestedDocument] = []
        offset = 0
        for document, chunks, extraction in zip(documents, chunk_lists, extractions):
            items.append(IngestedDocument(document, chunks, vectors[offset : offset + len(chunks)], extraction))
            offset += len(chunks)
        return items


def _pending(loader: CorpusLoader, pending_ids: set[str]) -> Iterator[Document]:
    if not pending_ids:
        return
    for document in loader:
        if document.doc_id in pending_ids:
            yield document


def _batches(documents: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
