"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr through pycocoevalcap.

`coco_scores` is the standard COCO caption evaluation (PTB tokenizer, then each scorer); the
tokenizer and METEOR run on Java, so it checks for a Java runtime first and says what to install.
The same function scores evaluate's beam and greedy captions and train's validation captions
(a subset of the metrics there: the PTB tokenizer runs once, METEOR is skipped).
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from pipeline.errors import MissingToolError


class JavaError(MissingToolError):
    """No working Java runtime for the PTB tokenizer and METEOR."""


METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
JAVA_HELP = ("pycocoevalcap's PTB tokenizer and METEOR need a Java runtime: install one "
             "(Debian/Ubuntu: `apt-get install default-jre-headless`; macOS: `brew install openjdk`) "
             "so that `java -version` works, then rerun.")


def require_java() -> None:
    """Raise a clear error when no working `java` is on the PATH."""
    java = shutil.which("java")
    if java is None:
        raise JavaError(f"`java` not found on the PATH. {JAVA_HELP}")
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        raise JavaError(f"`{java} -version` failed ({error}). {JAVA_HELP}") from error


def _check(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> None:
    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must cover the same images")
    if not references:
        raise ValueError("no captions to score")


def coco_scores(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str],
                metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (or the named subset) of one hypothesis per image.

    Every score in the project comes from here: the PTB tokenizer first, then each scorer, so the
    validation scores that pick the checkpoint are the same measure as the reported ones.
    """
    _check(references, hypotheses)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; expected some of {METRICS}")
    require_java()
    # one run of the (Java) tokenizer for both sides
    both = {**{f"ref\t{k}": [{"caption": c} for c in v] for k, v in references.items()},
            **{f"hyp\t{k}": [{"caption": hypotheses[k]}] for k in references}}
    tokens = PTBTokenizer().tokenize(both)
    gts = {k: tokens[f"ref\t{k}"] for k in references}
    res = {k: tokens[f"hyp\t{k}"] for k in references}
    results: dict[str, float] = {}
    if any(m.startswith("bleu") for m in metrics):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        results.update({f"bleu{n + 1}": float(b) for n, b in enumerate(bleu) if f"bleu{n + 1}" in metrics})
    if "meteor" in metrics:
        meteor = Meteor()  # a java subprocess, ended when the object is dropped
        results["meteor"] = float(meteor.compute_score(gts, res)[0])
        del meteor
    if "rouge_l" in metrics:
        results["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        results["cider"] = float(Cider().compute_score(gts, res)[0])
    return results
