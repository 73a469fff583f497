"""The intel a scan needs, loaded once per process: IOC lists and free-hosting suffixes."""

from __future__ import annotations

from dataclasses import dataclass

from dsguard.config import Config
from dsguard.intel.hosting import SuffixSet
from dsguard.intel.iocs import IocDB


@dataclass(frozen=True, slots=True)
class Intel:
    iocs: IocDB
    free_hosting: SuffixSet

    @classmethod
    def from_config(cls, config: Config) -> Intel:
        return cls(
            iocs=IocDB.load(config.intel.ioc_files, bundled=config.intel.bundled_iocs),
            free_hosting=SuffixSet(config.intel.free_hosting),
        )
