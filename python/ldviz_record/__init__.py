"""ldviz-record: write ldviz run files (how the summed log-probs of chosen, rejected,
paraphrased, unrelated, shuffled and greedy responses move) from Hugging Face `Trainer`, TRL's
`SFTTrainer` and `DPOTrainer`. See docs/recorder.md in the ldviz repository."""

__version__ = "0.1.0"

from .probes import Probe, ProbeFile, ProbeFileError, read_probes  # noqa: E402
from .scoring import encode  # noqa: E402
from .recorder import Recorder  # noqa: E402
from .callback import LdvizCallback  # noqa: E402

__all__ = ["LdvizCallback", "Recorder", "ProbeFile", "Probe", "ProbeFileError", "read_probes", "encode", "__version__"]
