"""One way to register every concept the pipeline is extended by: export targets, runtimes, datasets,
backends. A registry maps names to specs; modules that declare specs of their own (a runtime module, a
dataset module) live in one package and are found on first use, so a new one is one new module."""
import importlib
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from pipeline.errors import PipelineError

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """``name -> spec`` in registration order; ``package``: the modules that register into it, imported
    on the first lookup."""

    def __init__(self, what: str, package: str | None = None):
        self.what = what  # "export target", "runtime": how an error names the concept
        self.package = package
        self._specs: dict[str, Spec] = {}
        self._discovered = package is None

    def add(self, spec: Spec) -> Spec:
        name = spec.name
        if name in self._specs and self._specs[name] is not spec:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._specs[name] = spec
        return spec

    def remove(self, name: str) -> None:
        self._specs.pop(name, None)

    @contextmanager
    def temporarily(self, spec: Spec):
        """``spec`` registered inside the block (a plugin tried out, a test's own target)."""
        self.add(spec)
        try:
            yield spec
        finally:
            self.remove(spec.name)

    def __getitem__(self, name: str) -> Spec:
        self._discover()
        if name not in self._specs:
            raise PipelineError(f"Unknown {self.what} {name!r}.", f"Valid choices: {', '.join(self._specs)}.")
        return self._specs[name]

    def get(self, name: str, default=None):
        self._discover()
        return self._specs.get(name, default)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._specs))

    def __len__(self) -> int:
        self._discover()
        return len(self._specs)

    def values(self) -> list[Spec]:
        self._discover()
        return list(self._specs.values())

    def items(self) -> list[tuple[str, Spec]]:
        self._discover()
        return list(self._specs.items())

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True  # first: a module that looks a spec up while it registers does not recurse
        discover(self.package)


def discover(package_name: str) -> None:
    """Import every module of ``package_name`` (each registers what it declares)."""
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
