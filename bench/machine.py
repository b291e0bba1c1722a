"""Facts about the machine a benchmark runs on, for the JSON and the report header."""

import platform


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The widest x86 vector extension the CPU reports, if any."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    for name in ("avx512f", "avx2", "avx", "sse4_2"):
                        if name in flags:
                            return name
                    return ""
    except OSError:
        pass
    return ""
