"""Importers: real routing traces in other people's formats -> :class:`~traces.format.RoutingTrace`.

Every importer reads its sources in the order given, keeps request ids as the source gives them,
checks each file and raises :class:`~sim.errors.TraceFormatError` naming the file, the line and what
was expected on the first violation. Nothing is written here; the CLI validates and writes.

Formats (see ``../shared/data/README.md``), one module each: :mod:`traces.import_moe_beyond`,
:mod:`traces.import_speculative`; serving engines' formats are in :mod:`traces.engine_import`.

``moe-beyond-csv``
    DeepSeek-V2-Lite-Chat prefill routing recorded by MoE-Beyond: one CSV per prompt,
    ``prompt_N_data.csv`` with columns ``Layer ID,Batch Number,Token,Activated Expert IDs``, one row
    per (layer, token), rows grouped by layer (all tokens of layer 1, then layer 2, ...), expert
    ids a quoted list of ``top_k`` ints. Request id = ``N``; layer ids 1..26; 64 experts; top-6.

``speculative-moe-jsonl``
    Mixtral-8x7B decode routing recorded by speculative-moe: one JSON object per (problem, layer,
    token) with ``dataset``, ``problem_id``, ``layer`` (0..31), ``experts`` [2], ``gating_probs``
    [2] and the token position as ``token_idx`` or ``token_pos``. Request id = ``dataset/problem_id``
    (problem ids restart at 0 in every dataset); with ``id_scope="file"`` it is
    ``file-stem/problem_id`` instead (needed when one problem was recorded in two files, as
    ``humaneval_1`` and ``humaneval_2`` both hold HumanEval problem 0). A request id seen twice is an
    error, never a silent merge. A token lacking some of its layer records is "missing": with
    ``missing="drop"`` the token is dropped and counted, with ``missing="fail"`` the import fails.
"""

from __future__ import annotations

from traces.import_moe_beyond import MOE_BEYOND_COLUMNS, import_moe_beyond_csv
from traces.import_speculative import MissingReport, import_speculative_moe_jsonl

__all__ = ["MOE_BEYOND_COLUMNS", "ROUTING_FORMATS", "MissingReport", "import_moe_beyond_csv",
           "import_speculative_moe_jsonl"]

#: --format name -> (importer, what the sources are)
ROUTING_FORMATS = {
    "moe-beyond-csv": "DeepSeek-V2-Lite prompt_N_data.csv files (MoE-Beyond)",
    "speculative-moe-jsonl": "Mixtral-8x7B *_routing.jsonl files (speculative-moe)",
}
