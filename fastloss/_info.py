"""``fastloss.info()`` or ``python -m fastloss``: versions, build state and the backend each op would use."""
import platform

import torch

from fastloss import _backend, _extension


def info(file=None):
    lines = [
        f"fastloss      {__import__('fastloss').__version__}",
        f"python        {platform.python_version()}",
        f"torch         {torch.__version__} (CUDA {torch.version.cuda})",
    ]
    try:
        import triton

        lines.append(f"triton        {triton.__version__}")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"triton        not importable ({exc.__class__.__name__})")
    C = _extension.C
    if C is None:
        lines.append(f"fastloss._C   not loaded: {_extension.load_error}")
    else:
        lines.append(f"fastloss._C   built (sources {C.SOURCE_HASH}, CPU {C.CPU_CAPABILITY}, CUDA part {('for ' + C.CUDA_ARCHS) if C.WITH_CUDA else 'no'})")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"device        {torch.cuda.get_device_name()}")
    else:
        lines.append("device        no CUDA device")
    if C is None:
        lines.append(f"              {_extension.BUILD_HINT}")
    for dev in ("cpu", "cuda"):
        lines.append(f"[{dev}] available backends: {_backend.available_backends(dev)}")
        missing = _backend.unavailable_backends(dev)
        if len(set(missing.values())) == 1 and len(missing) == len(_backend.BACKENDS):
            lines.append(f"[{dev}]   none: {next(iter(missing.values()))}")
        else:
            lines += [f"[{dev}]   no {name}: {why}" for name, why in missing.items()]
        if dev not in devices:
            continue
        for op in _backend.ops():
            try:
                chosen = _backend.resolve(op, dev)
            except RuntimeError as exc:
                chosen = f"error: {exc}"
            lines.append(f"[{dev}]   {op}: {chosen}")
    text = "\n".join(lines)
    print(text, file=file)
    return text

