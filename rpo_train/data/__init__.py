"""Training data: the ``data:`` section, one type per source (``config``: ``BundledData``, ``FileData``,
``GymData``); the sources' rows (``rows``: a bundled task, local files through 🤗 datasets in ``files``, reasoning-gym
in ``gym``); and the run's per-question object (``question``: ``Question``, built once with its prompt ids and
cache key by ``load_questions``)."""

from .config import BundledData, DataSection, FileData, GymData
from .question import Question, encode_prompt, load_questions, question_id
from .rows import load_rows

__all__ = ["BundledData", "DataSection", "FileData", "GymData", "Question", "encode_prompt", "load_questions",
           "load_rows", "question_id"]
