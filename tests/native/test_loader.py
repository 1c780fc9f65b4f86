"""The ELF loader: a good kernel's segments, entry and symbols; bad files refused with the file
and the reason named, by the loader and by the configuration's `kernel` key."""
import pytest

from partitions.config import ConfigError, loads
from partitions.native_guest.loader import ElfLoadError, load_elf
from tests.native.kernels import BASE, HALT_FOREVER, build, elf_bytes

MIB = 1 << 20
CODE = b"\xf4\xeb\xfd"  # hlt; jmp back


def test_a_kernel_built_with_gcc_loads_with_its_entry_segments_and_symbols(tmp_path):
    elf = build(tmp_path, "k", "  nop\nsecond:\n" + HALT_FOREVER)
    image = load_elf(elf, 4 * MIB)
    assert image.entry == BASE
    code = next(s for s in image.segments if s.flags & 1)
    assert code.gpa == BASE and code.data.startswith(b"\x90\xf4")
    assert image.symbol_at(BASE) == "_start"
    assert image.symbol_at(BASE + 1) == "second"


@pytest.mark.parametrize("kw, why", [
    (dict(cls=1), "is ELF32; a native guest is ELF64"),
    (dict(machine=183), "is for machine EM_AARCH64; a native guest is EM_X86_64"),
    (dict(etype=3), "is of type ET_DYN; a native guest is a static ET_EXEC"),
])
def test_the_wrong_class_machine_or_type_is_refused_naming_the_file(tmp_path, kw, why):
    path = tmp_path / "bad.elf"
    path.write_bytes(elf_bytes([(BASE, CODE, len(CODE), 5)], **kw))
    with pytest.raises(ElfLoadError) as e:
        load_elf(path, 4 * MIB)
    assert str(e.value).startswith(f"{path}: ") and why in str(e.value)


@pytest.mark.parametrize("segments, entry, why", [
    ([(BASE, CODE, 0x2000, 5), (BASE + 0x1000, CODE, 3, 6)], BASE, "segments overlap: [0x100000, 0x102000) and "
                                                                     "[0x101000, 0x101003)"),
    ([(BASE, CODE, 3, 5), (4 * MIB - 1, CODE, 3, 6)], BASE, "the segment [0x3fffff, 0x400002) lies outside the "
                                                            "VM's memory"),
    ([(BASE, CODE, 3, 5)], 0, "has no entry point"),
    ([(BASE, CODE, 3, 6)], BASE, "its entry point 0x100000 is in no executable segment"),
    ([], BASE, "has no PT_LOAD segment"),
])
def test_bad_layouts_are_refused_with_what_is_wrong(tmp_path, segments, entry, why):
    path = tmp_path / "bad.elf"
    path.write_bytes(elf_bytes(segments, entry=entry))
    with pytest.raises(ElfLoadError, match=str(path)) as e:
        load_elf(path, 4 * MIB)
    assert why in str(e.value)


def test_a_file_that_is_no_elf_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ElfLoadError, match="is not an ELF file"):
        load_elf(path)


def test_the_config_key_checks_the_kernel_and_names_file_and_key(tmp_path):
    good = build(tmp_path, "k", HALT_FOREVER)
    config = loads(f'[[vm]]\nname = "a"\nmemory = "4MiB"\nkernel = "{good.name}"\n', base_dir=tmp_path)
    assert config.vms[0].kernel == good
    with pytest.raises(ConfigError) as e:
        loads('[[vm]]\nname = "a"\nkernel = "missing.elf"\n', file="host.toml", base_dir=tmp_path)
    assert "host.toml" in str(e.value) and "vm[0].kernel" in str(e.value) and "exists" in str(e.value)
    (tmp_path / "big.elf").write_bytes(elf_bytes([(BASE, CODE, 8 * MIB, 5)]))
    with pytest.raises(ConfigError) as e:
        loads('[[vm]]\nname = "a"\nmemory = "4MiB"\nkernel = "big.elf"\n', file="host.toml", base_dir=tmp_path)
    assert "vm[0].kernel" in str(e.value) and "lies outside the VM's memory" in str(e.value)
