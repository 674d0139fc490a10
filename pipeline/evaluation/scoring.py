"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr through pycocoevalcap.

`coco_scores` is the standard COCO caption evaluation (PTB tokenizer, then each scorer); the
tokenizer and METEOR run on Java, so it checks for a Java runtime first and says what to install.
The same function scores evaluate's beam and greedy captions, train's validation captions (a subset
of the metrics there: the PTB tokenizer runs once, METEOR is skipped) and the baselines command.

The tokenizer runs as pycocoevalcap's `PTBTokenizer` runs it (same jar, same options, same tokens),
but with its Java process's stderr captured: the library's call lets that process print a speed line
on the terminal every time (some 40 lines for one baselines run) and writes a temporary file into
its installed package. METEOR's stderr is already captured by the library.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

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


# what the Java tokenizer takes for a line end, in a caption (`-preserveLines`: one caption a line)
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each caption PTB-tokenised, lower-cased and stripped of punctuation tokens, as pycocoevalcap's
    `PTBTokenizer().tokenize` does it, without the Java process writing to this process's stderr."""
    keys = [key for key, texts in captions.items() for _ in texts]
    text = "\n".join(LINE_BREAKS.sub(" ", caption) for texts in captions.values() for caption in texts)
    command = ["java", "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase"]
    done = subprocess.run(command, cwd=Path(ptbtokenizer.__file__).parent, input=text.encode(),
                          capture_output=True, check=False)
    lines = done.stdout.decode().split("\n")
    if done.returncode != 0 or len(lines) != len(keys):
        detail = " ".join(done.stderr.decode(errors="replace").split())[-300:]
        raise JavaError(f"the PTB tokenizer (java, exit status {done.returncode}) gave {len(lines)} lines for "
                        f"{len(keys)} captions: {detail or 'no message'}. {JAVA_HELP}")
    tokenized: dict[str, list[str]] = {key: [] for key in captions}
    for key, line in zip(keys, lines):
        words = [word for word in line.rstrip().split(" ") if word not in ptbtokenizer.PUNCTUATIONS]
        tokenized[key].append(" ".join(words))
    return tokenized


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
    both = {**{f"ref\t{k}": list(v) for k, v in references.items()},
            **{f"hyp\t{k}": [hypotheses[k]] for k in references}}
    tokens = ptb_tokenize(both)
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
