"""Energy of a piece of work: measured where the hardware reports it (RAPL on Intel/AMD CPUs
under Linux, NVML on NVIDIA GPUs), otherwise estimated from wall time and labelled as such."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

POWERCAP = Path("/sys/class/powercap")
# Assumptions of the estimate, stated in every estimated reading.
WATTS_PER_CPU_THREAD = 10.0
WATTS_PER_GPU = 300.0


@dataclass
class EnergyReading:
    """Joules spent over ``wall_time_s``; ``source`` is rapl, nvml or estimate."""

    joules: float
    wall_time_s: float
    source: str
    measured: bool
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def kwh(self) -> float:
        return self.joules / 3.6e6


def rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Top-level RAPL package domains whose energy counter this process can read."""
    domains = []
    for domain in sorted(root.glob("intel-rapl:*")):
        if domain.name.count(":") == 1 and _read_int(domain / "energy_uj") is not None:
            domains.append(domain)
    return domains


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _nvml_handles() -> list:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        for handle in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return handles
    except Exception:  # noqa: BLE001 - no pynvml, no driver or no energy counter: not measurable
        return []


def _nvml_millijoules(handles: list) -> float:
    import pynvml

    return float(sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles))


def estimate_energy(wall_time_s: float, hardware: dict | None) -> EnergyReading:
    """An estimate from wall time: GPU count × 300 W, else CPU threads × 10 W."""
    hardware = hardware or {}
    if hardware.get("gpu") or hardware.get("device") == "cuda":
        watts, basis = WATTS_PER_GPU, f"{WATTS_PER_GPU:.0f} W for one GPU"
    else:
        threads = int(hardware.get("threads") or 1)
        watts = WATTS_PER_CPU_THREAD * threads
        basis = f"{WATTS_PER_CPU_THREAD:.0f} W per CPU thread × {threads} threads"
    return EnergyReading(joules=watts * wall_time_s, wall_time_s=wall_time_s, source="estimate",
                         measured=False, note=f"estimated, not measured: {basis}")


class EnergyMeter:
    """``with EnergyMeter(hardware) as meter: ...`` then ``meter.reading``.

    GPU energy from NVML when a GPU reports it, else CPU package energy from RAPL, else an
    estimate from the wall time (labelled as an estimate).
    """

    def __init__(self, hardware: dict | None = None, powercap: Path = POWERCAP) -> None:
        self.hardware = hardware
        self.powercap = powercap
        self.reading: EnergyReading | None = None

    def __enter__(self) -> "EnergyMeter":
        self._nvml = _nvml_handles()
        self._rapl = [] if self._nvml else rapl_domains(self.powercap)
        self._start_counters = self._counters()
        self._started = time.perf_counter()
        return self

    def _counters(self) -> list[float]:
        if self._nvml:
            return [_nvml_millijoules(self._nvml)]
        return [float(_read_int(d / "energy_uj") or 0) for d in self._rapl]

    def __exit__(self, kind: type | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        wall = time.perf_counter() - self._started
        end = self._counters()
        if self._nvml:
            self.reading = EnergyReading((end[0] - self._start_counters[0]) / 1e3, wall, "nvml",
                                         True, "NVML total energy of every GPU")
        elif self._rapl:
            joules = 0.0
            for domain, start, stop in zip(self._rapl, self._start_counters, end):
                wrap = _read_int(domain / "max_energy_range_uj") or 0
                joules += (stop - start if stop >= start else stop + wrap - start) / 1e6
            self.reading = EnergyReading(joules, wall, "rapl", True,
                                         f"RAPL package energy of {len(self._rapl)} CPU "
                                         "package(s), whole machine")
        else:
            self.reading = estimate_energy(wall, self.hardware)
