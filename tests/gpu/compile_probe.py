"""Print how this torch answers the export/compile questions ``yolo13_attn.binding.exporting`` relies on."""

import torch

from yolo13_attn.binding import exporting

seen = {}


def probe(x):
    seen["is_exporting"] = torch.compiler.is_exporting()
    seen["exporting"] = exporting()
    return x + 1


torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(1))
print(
    f"torch {torch.__version__}: has _is_exporting_flag={hasattr(torch.compiler, '_is_exporting_flag')}; "
    f"under torch.compile is_exporting()={seen['is_exporting']} (traced value), exporting()={seen['exporting']}"
)
