"""Memory of segmenting a long video file as a stream: resident memory (RSS) while `segment_video` runs over a
generated video of N frames, written to a mask folder.

The video (a textured background with two moving boxes) is written frame by frame with imageio-ffmpeg, then
segmented from its first-frame mask with a model (default: the shipped small checkpoint). RSS is sampled from
/proc/self/status every --every frames; the peak is the process's ru_maxrss. If decoding or the engine kept
frames, RSS would grow with the frame count.

    python -m benchmarks.stream_memory --frames 2000 --height 64 --width 96 --threads 1
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile

import numpy as np

from benchmarks.machine import machine_info


def rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def frame(t: int, height: int, width: int, background: np.ndarray) -> np.ndarray:
    """Frame t: two boxes moving on a fixed texture (the video repeats every 2 * width frames)."""
    img = background.copy()
    x = (t % (2 * width)) if (t // width) % 2 == 0 else width - 1 - t % width
    x = int(np.clip(x, 0, width - 17))
    img[8:24, x : x + 16] = (220, 40, 40)
    y = int(np.clip(height // 2 + 10 * np.sin(t / 15.0), 0, height - 13))
    img[y : y + 12, width // 2 : width // 2 + 20] = (40, 200, 60)
    return img


def write_video(path: str, count: int, height: int, width: int) -> np.ndarray:
    """Write the video; returns the first frame's labels."""
    import imageio  # noqa: PLC0415

    background = np.random.default_rng(0).integers(0, 80, (height, width, 3), dtype=np.uint8)
    writer = imageio.get_writer(path, fps=25, codec="libx264", macro_block_size=1, quality=8)
    for t in range(count):
        writer.append_data(frame(t, height, width, background))
    writer.close()
    first = frame(0, height, width, background)
    labels = np.zeros((height, width), np.uint8)
    labels[(first == (220, 40, 40)).all(-1)] = 1
    labels[(first == (40, 200, 60)).all(-1)] = 2
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--every", type=int, default=250, help="sample RSS every N frames")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped small checkpoint")
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415

    import cfbi_model  # noqa: PLC0415
    from cfbi_model.build import shipped_weights  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    model = cfbi_model.load_model(args.checkpoint or shipped_weights())
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="cfbi-stream-") as scratch:
        video = os.path.join(scratch, "long.mp4")
        labels = write_video(video, args.frames, args.height, args.width)
        baseline = rss_mib()

        def on_frame(prediction) -> None:
            done = prediction.index + 1
            if done == 1 or done % args.every == 0:
                samples.append((done, rss_mib()))

        result = cfbi_model.segment_video(
            video, labels, model=model, out=os.path.join(scratch, "out"), on_frame=on_frame
        )
        written = sum(1 for name in os.listdir(result.folder) if name.endswith(".png"))
    info = machine_info()
    print(f"machine: {info['machine']} {info['cpu']}, torch {info['torch']}, threads {args.threads}")
    print(f"video: {args.frames} frames of {args.width}x{args.height}; {result.summary()}; {written} masks written")
    print(f"RSS after loading the model and writing the video: {baseline:.1f} MiB")
    print("| frames done | RSS (MiB) |\n|---|---|")
    for done, value in samples:
        print(f"| {done} | {value:.1f} |")
    print(f"peak RSS (ru_maxrss): {peak_rss_mib():.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
