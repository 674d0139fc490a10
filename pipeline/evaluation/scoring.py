"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr through pycocoevalcap.

`coco_scores` is the standard COCO caption evaluation (PTB tokenizer, then each scorer); the
tokenizer and METEOR run on Java, so it checks for a Java runtime first and says what to install.
`bleu4` is the pure-Python BLEU-4 on already-normalised captions, cheap enough to run on the
validation split every epoch.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

JAVA_HELP = ("pycocoevalcap's PTB tokenizer and METEOR need a Java runtime: install one "
             "(Debian/Ubuntu: `apt-get install default-jre-headless`; macOS: `brew install openjdk`) "
             "so that `java -version` works, then rerun.")


def require_java() -> None:
    """Raise a clear error when no working `java` is on the PATH."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(f"`java` not found on the PATH. {JAVA_HELP}")
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        raise RuntimeError(f"`{java} -version` failed ({error}). {JAVA_HELP}") from error


def _check(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> None:
    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must cover the same images")
    if not references:
        raise ValueError("no captions to score")


def bleu4(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> float:
    """Corpus BLEU-4 on whitespace-tokenised, already-normalised captions (no Java)."""
    _check(references, hypotheses)
    gts = {k: list(v) for k, v in references.items()}
    res = {k: [hypotheses[k]] for k in references}
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def coco_scores(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of one hypothesis per image against its references."""
    _check(references, hypotheses)
    require_java()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": hypotheses[k]}] for k in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    results = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    meteor = Meteor()  # a java subprocess, ended when the object is dropped
    results["meteor"] = float(meteor.compute_score(gts, res)[0])
    del meteor
    results["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    results["cider"] = float(Cider().compute_score(gts, res)[0])
    return results
