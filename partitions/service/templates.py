"""VM templates of the management service: the built-in ones and those of `hvsim serve --templates
FILE`, each a [[vm]] table without its name, checked as a host file's VM is.

    templates = load_templates("templates.toml", config)   # or builtin_templates(config)
    table = templates["small"].fragment("vm1")             # the [[vm]] keys, with name = "vm1"

A templates file holds one table per template; its keys are a [[vm]] table's keys (except `name`,
given when a VM is created) plus an optional `description`. A string value may hold "{name}", the
new VM's name: a disk's path needs it, so that each VM made from the template has its own disk
(relative paths resolve where the service keeps its VM files).

    [templates.big]
    description = "4 VPs, 4 GiB, busy"
    processors = 4
    memory = "4GiB"
    workload = { kind = "cpu-burn", duty = 0.9 }

    [templates.db]
    memory = "1GiB"
    disks = [ { path = "{name}-data.vhd", size = "1GiB" } ]
    workload = { kind = "disk-io", pattern = "random" }

A file's template replaces a built-in one of the same name. Each template is checked against the
service's (first) host, with a placeholder name: a mistake is a ConfigError naming the file and
the key (`templates.big.processors`), found when the server starts rather than at the first
create. Built-ins: "small" (1 VP, 512 MiB, half a VP of cpu-burn), "web" (the same with a network
adapter on the host's first switch, when it has a switch) and "disk" (disk-io on a 64 MiB disk of
its own).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from partitions.config_schema import Config, ConfigError, DatacenterConfig, show, toml_key

_NAME_CHECK = "template-check"   # the placeholder VM name templates are checked with


@dataclass(frozen=True)
class Template:
    """A named [[vm]] table without its name; strings may hold "{name}"."""
    name: str
    vm: Mapping[str, Any]
    description: str = ""
    source: str = "built-in"              # "built-in", or the file it came from

    def fragment(self, name: str) -> dict[str, Any]:
        """The [[vm]] table of a VM called `name` made from this template."""
        table = _substitute(copy.deepcopy(dict(self.vm)), name)
        return {"name": name, **table}

    def row(self) -> dict[str, Any]:
        """The template as GET /v1/templates lists it."""
        return {"name": self.name, "description": self.description, "source": self.source,
                "vm": copy.deepcopy(dict(self.vm))}


def _substitute(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return value.replace("{name}", name)
    if isinstance(value, list):
        return [_substitute(v, name) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, name) for k, v in value.items()}
    return value


def _host_config(config: Config | DatacenterConfig | None) -> Config:
    if isinstance(config, DatacenterConfig):
        return config.hosts[0].config
    return config if config is not None else Config()


def builtin_templates(config: Config | DatacenterConfig | None = None) -> dict[str, Template]:
    """The built-in templates for a service over `config` (its first host's switches)."""
    host = _host_config(config)
    half = {"kind": "cpu-burn", "duty": 0.5, "period": "10ms"}
    web: dict[str, Any] = {"processors": 1, "memory": "512MiB", "workload": {"kind": "cpu-burn", "duty": 0.3}}
    web_text = "1 VP, 512 MiB, light CPU load"
    if host.switches:
        switch = host.switches[0].name
        web["nics"] = [{"switch": switch}]
        web_text += f', a network adapter on switch "{switch}"'
    templates = [
        Template("small", {"processors": 1, "memory": "512MiB", "workload": half},
                 "1 VP, 512 MiB, half a VP of CPU load"),
        Template("web", web, web_text),
        Template("disk", {"processors": 1, "memory": "512MiB",
                          "disks": [{"path": "{name}.vhd", "size": "64MiB", "type": "dynamic"}],
                          "workload": {"kind": "disk-io", "pattern": "random", "block_size": "4KiB",
                                       "queue_depth": 4, "read_fraction": 0.7}},
                 "1 VP, 512 MiB, random 4 KiB I/O on a 64 MiB disk of its own"),
    ]
    out = {t.name: t for t in templates}
    for t in out.values():
        check_template(t, host, file="the built-in templates")
    return out


def load_templates(path: str | os.PathLike | None, config: Config | DatacenterConfig | None = None
                   ) -> dict[str, Template]:
    """The built-in templates, then those of the file at `path` (None: none), checked."""
    if path is None:
        return builtin_templates(config)
    from partitions.config import read_toml_file
    file = str(path)
    data = read_toml_file(path, "a readable templates file")
    return templates_from_dict(data, config, file=file)


def templates_from_dict(data: Any, config: Config | DatacenterConfig | None = None, *, file: str = "<templates>"
                        ) -> dict[str, Template]:
    """The built-in templates, then those of a parsed templates file, checked."""
    from partitions.config import _Reader, _NAME, _NAME_EXPECTED
    templates = builtin_templates(config)
    r = _Reader(file, Path.cwd())
    r.table(data, "", ("templates",))
    tables = data.get("templates", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        r.fail("templates", "[templates.NAME] tables of [[vm]] keys", show(tables))
    host = _host_config(config)
    for name, table in tables.items():
        key = f"templates.{toml_key(name)}"
        if not _NAME.fullmatch(name):
            r.fail(key, f"a template name: {_NAME_EXPECTED}", show(name))
        if "name" in table:
            r.fail(f"{key}.name", "no name (a VM made from the template gets its name when it is created)",
                   show(table["name"]))
        description = r.string(table, key, "description", "")
        vm = {k: v for k, v in table.items() if k != "description"}
        template = Template(name, vm, description, source=file)
        check_template(template, host, file=file)
        templates[name] = template
    return templates


def check_template(template: Template, host: Config, *, file: str) -> None:
    """Check a template as a [[vm]] of `host` (its host table and switches): ConfigError naming
    `file` and the key under templates.NAME."""
    from partitions.config import from_dict
    h = host.host
    document = {"host": {"logical_processors": h.logical_processors, "smt": h.smt, "memory": h.memory,
                         "scheduler": h.scheduler},
                "switch": [{"name": s.name, "type": s.type} for s in host.switches],
                "vm": [template.fragment(_NAME_CHECK)]}
    try:
        from_dict(document, file=file)
    except ConfigError as exc:
        key = exc.key
        if key is not None and key.startswith("vm[0]"):
            key = f"templates.{toml_key(template.name)}" + key[len("vm[0]"):]
        elif key is not None:
            key = f"templates.{toml_key(template.name)} ({key})"
        got = exc.got.replace(_NAME_CHECK, "{name}")
        raise ConfigError(file, key, exc.expected, got, hint=exc.hint) from None


__all__ = ["Template", "builtin_templates", "load_templates", "templates_from_dict", "check_template"]
