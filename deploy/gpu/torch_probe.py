"""The shipped networks' arithmetic ceiling on a GPU, measured through torch (not the daemon).

The daemon runs the models through ONNX Runtime; where a GPU machine has no CUDA build of
ONNX Runtime, this times the same architectures (``daemon.training.nets``, random weights:
the speed does not depend on them) in torch, fp16 and fp32, with CUDA events, so the card's
ceiling for these models is known. Prints one JSON line per case.

    python3 deploy/gpu/torch_probe.py
"""

from __future__ import annotations

import json

import torch

from daemon.training.nets import MobileNetV2, UNet

CASES = (  # (name, network, input side px, batches)
    ("segmenter", lambda: UNet(8, 4), 224, (1, 16, 64, 256)),
    ("segmenter_camera_at_model_scale", lambda: UNet(8, 4), (432, 640), (1, 8, 32)),
    ("classifier_w0.5", lambda: MobileNetV2(num_classes=5, width=0.5), 64, (1, 64, 512, 2048)),
    ("classifier_w1.0", lambda: MobileNetV2(num_classes=5, width=1.0), 64, (1, 64, 512, 2048)),
)


@torch.no_grad()
def main() -> None:
    device = torch.device("cuda")
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name()}))
    for name, make, side, batches in CASES:
        h, w = side if isinstance(side, tuple) else (side, side)
        for dtype in (torch.float16, torch.float32):
            net = make().to(device, dtype).eval().to(memory_format=torch.channels_last)
            for batch in batches:
                x = torch.rand(batch, 3, h, w, device=device, dtype=dtype).contiguous(
                    memory_format=torch.channels_last)
                for _ in range(5):
                    net(x)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                runs = max(5, 2000 // batch)
                start.record()
                for _ in range(runs):
                    net(x)
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / runs
                print(json.dumps({"model": name, "dtype": str(dtype).split(".")[-1],
                                  "batch": batch, "input": [h, w], "ms_per_batch": round(ms, 3),
                                  "items_per_s": round(1000 * batch / ms, 1)}), flush=True)


if __name__ == "__main__":
    main()
