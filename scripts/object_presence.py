"""Per object of a toy-world prompt: on how many frames of a video it is present, matched, and when it
was last seen, by the world's exact truth metrics (``memrope.world.truth``).

    python scripts/object_presence.py memrope.mp4 attention_sink.mp4 \
        [--prompt "a red disc and a blue square bounce on a navy gradient"]

``present``: the object's own colour covers at least half its template area on that frame;
``matched``: present and its shape and size are the prompt's (template IoU). The README's
description of the default video quotes this script's output.
"""

from __future__ import annotations

import argparse

import numpy as np

from memrope.generate_options import DEFAULT_PROMPT
from memrope.video import read_frames
from memrope.world.prompts import parse_prompt
from memrope.world.script import Timeline
from memrope.world.truth import TruthConfig, _score_frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("videos", nargs="+")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--fps", type=float, default=16.0)
    args = p.parse_args()
    spec = parse_prompt(args.prompt)
    for video in args.videos:
        frames = read_frames(video)
        scores = _score_frames(frames, Timeline.constant(spec), TruthConfig())  # per frame, [T, objects]
        print(f"{video}: {len(frames)} frames")
        for k, obj in enumerate(spec.objects):
            present, matched = scores.present[:, k], scores.matched[:, k]
            seen = np.flatnonzero(present)
            last = f"last present at frame {seen[-1]} ({seen[-1] / args.fps:.1f} s)" if len(seen) else "never present"
            print(f"  {obj.colour} {obj.shape}: present in {int(present.sum())} frames, matched in "
                  f"{int(matched.sum())}; {last}; present in {int(present[len(frames) // 2:].sum())} of the "
                  f"last {len(frames) - len(frames) // 2}")
        both = scores.present.all(axis=1)
        print(f"  all objects present together: {int(both.sum())} frames")


if __name__ == "__main__":
    main()
