"""Importers: real routing traces in other people's formats -> :class:`~traces.format.RoutingTrace`.

Every importer reads its sources in the order given, keeps request ids as the source gives them,
checks each file and raises :class:`~sim.common.errors.TraceFormatError` naming the file, the line and what
was expected on the first violation. Nothing is written here; the CLI validates and writes.

Formats (see ``../shared/data/README.md``), one module each, whose docstring describes the
format: :mod:`traces.import_moe_beyond` (``moe-beyond-csv``), :mod:`traces.import_speculative`
(``speculative-moe-jsonl``); serving engines' formats are in :mod:`traces.engine_import`.
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
